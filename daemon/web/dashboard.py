"""The operator's dashboard at ``GET /`` (the Prometheus scrape and the probes are :mod:`daemon.web.ops`).

The dashboard is one server-rendered page, readable without JavaScript; its script
(``static/dashboard.js``) renders the same markup again every 2 s from the JSON API. Its elements
carry stable ``data-*`` attributes (``data-account``, ``data-busy``, ``data-max``, ``data-effective``,
``data-job``, ``data-progress``, ...) so tests and scripts can read it.

With ``GENRELAY_API_TOKENS`` set, the page needs a token like the API: an ``Authorization: Bearer``
header, or, from a browser, ``/?token=...`` once. The script then keeps the token in the tab's
``sessionStorage`` for its API calls and removes it from the address bar; a reload without it gets
a small page that presents the kept token again, or asks for one. The access log never records a
query string, so the token is not logged.
"""

from __future__ import annotations

import base64
import hashlib
import time
from html import escape
from importlib.resources import files
from string import Template
from typing import Any
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from daemon.budget_view import budget_text
from daemon.keys import ASSET_ID_PATTERN
from daemon.slots import format_elapsed
from daemon.store import MAX_PAGE_SIZE
from daemon.web.api import SERVICES
from daemon.web.auth import token_accepted

FINISHED_SHOWN = 10
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".avif")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".m4v")

_STATIC = files("daemon.web") / "static"
_STYLE = (_STATIC / "dashboard.css").read_text(encoding="utf-8")
_DASHBOARD_SCRIPT = (_STATIC / "dashboard.js").read_text(encoding="utf-8")
_LOGIN_SCRIPT = (_STATIC / "login.js").read_text(encoding="utf-8")
_DASHBOARD = Template((_STATIC / "dashboard.html").read_text(encoding="utf-8"))
_LOGIN = Template((_STATIC / "login.html").read_text(encoding="utf-8"))

routes = web.RouteTableDef()


def _csp_hash(inline: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode() + "'"


def _security_headers(*scripts: str) -> dict[str, str]:
    """Only our own inline scripts and style run (by hash), so a provider's message or URL shown on
    the page cannot inject any; images may come from anywhere (artifact thumbnails)."""
    allowed = " ".join(_csp_hash(script) for script in scripts)
    policy = (
        f"default-src 'none'; script-src {allowed}; style-src {_csp_hash(_STYLE)}; "
        "img-src http: https:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "Referrer-Policy": "no-referrer",  # the address may hold ?token= until the script runs
        hdrs.CACHE_CONTROL: "no-store",
        "X-Content-Type-Options": "nosniff",
    }


@routes.get("/")
async def dashboard(request: web.Request) -> web.Response:
    """The dashboard, or 401 with a token form when tokens are set and none was accepted."""
    services = request.app[SERVICES]
    tokens = services.settings.api_tokens
    if tokens and not _token_presented(request, tokens):
        page = _LOGIN.substitute(style=_STYLE, script=_LOGIN_SCRIPT)
        # The login script shows the dashboard in its own document (fetched with the kept token in a
        # header, never in the address), so the dashboard's script must be allowed to run there too.
        headers = _security_headers(_LOGIN_SCRIPT, _DASHBOARD_SCRIPT)
        return web.Response(text=page, status=401, content_type="text/html", headers=headers)
    capacity = await services.slots.capacity()
    active, active_total = await services.store.list_jobs(
        state="active", provider=None, page=1, limit=MAX_PAGE_SIZE
    )
    finished, _ = await services.store.list_jobs(
        state="completed", provider=None, page=1, limit=FINISHED_SHOWN
    )
    latest = [job.to_api() for job in finished]
    if tokens:  # a link cannot carry the bearer token our copy needs: link the provider's URL
        for job in latest:
            job["status"].get("artifact", {}).pop("assetId", None)
    page = render_dashboard(capacity, [job.to_api() for job in active], active_total, latest)
    return web.Response(text=page, content_type="text/html", headers=_security_headers(_DASHBOARD_SCRIPT))


def _token_presented(request: web.Request, tokens: tuple[str, ...]) -> bool:
    if token_accepted(request.headers.get(hdrs.AUTHORIZATION), tokens):
        return True
    query_token = request.query.get("token")
    return bool(query_token) and token_accepted(f"Bearer {query_token}", tokens)


def render_dashboard(
    capacity: dict[str, Any],
    active: list[dict[str, Any]],
    active_total: int,
    finished: list[dict[str, Any]],
) -> str:
    """The whole page for a capacity view and the active and latest completed jobs (API shapes)."""
    elapsed = {entry["jobId"]: entry["elapsed"] for entry in capacity["executing"]}
    now_ms = int(time.time() * 1000)
    return _DASHBOARD.substitute(
        style=_STYLE,
        script=_DASHBOARD_SCRIPT,
        rendered_at=utc_time(now_ms),
        accounts=render_accounts(capacity["available"]),
        active_count=active_total,
        active="".join(
            _active_row(job, elapsed.get(job["jobId"]) or _elapsed(job, now_ms)) for job in active
        ),
        finished="".join(_finished_row(job) for job in finished),
    )


def render_accounts(available: list[dict[str, Any]]) -> str:
    providers: dict[str, list[dict[str, Any]]] = {}
    for entry in available:
        providers.setdefault(entry["provider"], []).append(entry)
    if not providers:
        return '<p class="empty">No accounts configured.</p>'
    return "".join(_provider_block(provider, entries) for provider, entries in providers.items())


def _provider_block(provider: str, entries: list[dict[str, Any]]) -> str:
    waiting = int(entries[0]["waiting"])
    rows = "".join(_account_row(entry) for entry in entries)
    return (
        f'<div class="provider" data-provider="{escape(provider)}"><h3>{escape(provider)} '
        f'<span class="queue" data-queue="{waiting}">{waiting} waiting</span></h3>{rows}</div>'
    )


def _account_row(entry: dict[str, Any]) -> str:
    busy, max_jobs = int(entry["executing"]), int(entry["maxJobs"])
    effective = int(entry.get("effectiveMaxJobs", max_jobs))
    cooldown_until = entry.get("cooldownUntil")
    enabled = bool(entry.get("enabled", True))
    marks = ""
    if effective < max_jobs:
        marks += (
            f'<span class="mark learned" title="concurrency 429s: {max_jobs - effective} slot(s) in use '
            f'elsewhere">{effective} of {max_jobs} usable</span>'
        )
    if cooldown_until:
        marks += f'<span class="mark cooldown" title="until {utc_time(cooldown_until)}">cooling down</span>'
    if not enabled:
        reason = escape(entry.get("disabledReason") or "")
        marks += f'<span class="mark disabled" title="{reason}">disabled</span>'
    if entry.get("requestBudget"):
        marks += (
            '<span class="mark budget" title="requests the request budget counted, of the provider\'s '
            f'limits">{escape(budget_text(entry["requestBudget"]))}</span>'
        )
    return (
        f'<div class="account" data-provider="{escape(entry["provider"])}" '
        f'data-account="{escape(entry["email"])}" data-busy="{busy}" data-max="{max_jobs}" '
        f'data-effective="{effective}" data-cooldown="{int(bool(cooldown_until))}" '
        f'data-disabled="{int(not enabled)}">'
        f'<span class="name">{escape(entry["email"])}</span>'
        f'<progress max="{max(max_jobs, 1)}" value="{busy}"></progress>'
        f'<span class="count">{busy} / {max_jobs}</span>{marks}</div>'
    )


def _active_row(job: dict[str, Any], elapsed: str) -> str:
    progress = int(job["status"]["progress"])
    return (
        f'<li class="job" data-job="{escape(job["jobId"])}" data-state="{escape(job["status"]["type"])}" '
        f'data-progress="{progress}"><span class="id">{escape(job["jobId"])}</span>'
        f'<span class="meta">{escape(job.get("account") or "-")} · {escape(job["operation"])}</span>'
        f'<progress max="100" value="{progress}"></progress><span class="pct">{progress}%</span>'
        f'<span class="elapsed">{escape(elapsed)}</span></li>'
    )


def _finished_row(job: dict[str, Any]) -> str:
    meta = f"{job.get('account') or '-'} · {job['operation']} · {utc_time(job.get('finishedAt'))}"
    return (
        f'<li class="job" data-job="{escape(job["jobId"])}" data-state="{escape(job["status"]["type"])}">'
        f"{artifact_link(job['status'].get('artifact'))}"
        f'<span class="id">{escape(job["jobId"])}</span><span class="meta">{escape(meta)}</span></li>'
    )


def artifact_link(artifact: dict[str, Any] | None) -> str:
    """A link to the artifact: a thumbnail for an image, a label otherwise. Only http(s) URLs are
    linked; anything else (``javascript:``, say) is not shown as a link at all."""
    url = artifact.get("assetUrl") if artifact else None
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        return '<span class="artifact none">no artifact</span>'
    kind = str((artifact or {}).get("kind") or "")
    path = urlsplit(url).path.lower()
    asset_id = (artifact or {}).get("assetId")
    if isinstance(asset_id, str) and ASSET_ID_PATTERN.match(asset_id):
        # Our archived copy (the provider's URL while the copy is not done yet).
        url = f"/v1/assets/{asset_id}/content?fallback=provider"
    if kind.startswith("image") or path.endswith(IMAGE_SUFFIXES):
        content = f'<img class="thumb" src="{escape(url)}" alt="{escape(kind or "image")}" loading="lazy">'
    elif kind == "video" or path.endswith(VIDEO_SUFFIXES):
        content = "▶ video"
    else:
        content = "⬇ " + escape(kind or "file")
    return (
        f'<a class="artifact" data-kind="{escape(kind)}" href="{escape(url)}" target="_blank" '
        f'rel="noopener noreferrer">{content}</a>'
    )


def utc_time(ms: int | None) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(ms / 1000)) if ms else ""


def _elapsed(job: dict[str, Any], now_ms: int) -> str:
    started = job.get("startedAt") or job.get("submittedAt") or job.get("createdAt") or now_ms
    return format_elapsed(now_ms - int(started))
