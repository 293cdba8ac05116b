"""Per-job capability tokens for the provider callback URL ``/callbacks/{provider}/{token}``.

Providers do not sign their callbacks, so the URL itself is the credential (a capability URL):
``{job_id}.{key_id}.{mac}`` where ``mac`` is HMAC-SHA256 over the provider and the job id with the
secret named by ``key_id`` (256 bits, base64url). The job id is in the clear so the token can be
checked before the body is even parsed; the key id lets the secret rotate: tokens issued under the
previous secret stay valid while ``GENRELAY_SECRET_PREVIOUS`` holds it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from dataclasses import dataclass

from daemon import keys


@functools.cache
def key_id(secret: str) -> str:
    """A short, public name for a secret (it reveals nothing of it)."""
    return hashlib.sha256(b"genrelay-callback-key:" + secret.encode()).hexdigest()[:8]


def _mac(secret: str, provider: str, job_id: str) -> str:
    digest = hmac.new(secret.encode(), f"{provider}:{job_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# Tokens that verified, so the many callbacks of one job cost one HMAC: (secrets, provider,
# token) -> job id. Only valid tokens get in, so the cache is no oracle; bounded, oldest out first.
_VERIFIED: dict[tuple[str, str | None, str, str], str] = {}
VERIFIED_CACHE_SIZE = 10_000
# An issued token is a job id (at most ~45 characters), a key id and a 43-character MAC.
MAX_TOKEN_LENGTH = 256


@dataclass(frozen=True, slots=True)
class CallbackTokens:
    """Issues tokens with the current secret; accepts the current and the previous one."""

    current: str
    previous: str | None = None

    def issue(self, provider: str, job_id: str) -> str:
        return f"{job_id}.{key_id(self.current)}.{_mac(self.current, provider, job_id)}"

    def verify(self, provider: str, token: str) -> str | None:
        """The job id the token was issued for, or None when it is not a valid token for ``provider``.

        Every candidate is compared with ``hmac.compare_digest``, so timing tells nothing.
        """
        if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            return None  # compare_digest refuses non-ASCII text; no issued token is that long
        cache_key = (self.current, self.previous, provider, token)
        known = _VERIFIED.get(cache_key)
        if known is not None:
            return known
        parts = token.split(".")
        if len(parts) != 3 or keys.provider_of(parts[0]) != provider:
            return None
        job_id, kid, mac = parts
        valid = False
        for secret in (self.current, self.previous):
            if secret is not None and hmac.compare_digest(kid, key_id(secret)):
                valid = hmac.compare_digest(mac, _mac(secret, provider, job_id)) or valid
        if not valid:
            return None
        if len(_VERIFIED) >= VERIFIED_CACHE_SIZE:
            del _VERIFIED[next(iter(_VERIFIED))]
        _VERIFIED[cache_key] = job_id
        return job_id
