"""``GET /v1/assets`` and ``GET /v1/assets/{id}``: every finished artifact, newest first.

Same bearer auth as ``/v1/jobs`` (the middleware covers ``/v1``); the query is checked as the job
listing's is, and ``meta`` has the shape of useapi's asset listing
(https://useapi.net/docs/api-ltxstudio-v1/get-ltxstudio-assets).
"""

from __future__ import annotations

import math

from aiohttp import web

from daemon.archive_state import STATES
from daemon.assets import ASSET_TYPES, MAX_WORKFLOW_LENGTH, AssetStore
from daemon.errors import InvalidRequest
from daemon.services import Services
from daemon.store import MAX_PAGE_SIZE
from daemon.web.api import (
    DEFAULT_PAGE_SIZE,
    SERVICES,
    bounded_integer,
    choice,
    configured_provider,
    query_params,
)
from daemon.web.errors import json_response

routes = web.RouteTableDef()


def asset_store(services: Services) -> AssetStore:
    return AssetStore(services.client, services.scripts, services.settings)


@routes.get("/v1/assets")
async def list_assets(request: web.Request) -> web.Response:
    """Assets newest first, filtered by ``type``, ``provider``, ``workflow`` and ``archive`` (the
    archived copy's state: pending, archived, failed, expired) (together too),
    paged with ``page``/``limit``. An empty parameter counts as not given."""
    services = request.app[SERVICES]
    query = query_params(request, allowed=("type", "provider", "workflow", "archive", "page", "limit"))
    asset_type = choice(query, "type", ASSET_TYPES)
    archive = choice(query, "archive", STATES)
    provider = configured_provider(query, services, missing=InvalidRequest)
    workflow = query.get("workflow")
    if workflow is not None and len(workflow) > MAX_WORKFLOW_LENGTH:
        raise InvalidRequest(f"'workflow' must be at most {MAX_WORKFLOW_LENGTH} characters")
    page = bounded_integer(query, "page", default=1, low=1)
    limit = bounded_integer(query, "limit", default=DEFAULT_PAGE_SIZE, low=1, high=MAX_PAGE_SIZE)
    items, total = await asset_store(services).list_assets(
        asset_type=asset_type, provider=provider, workflow=workflow, archive=archive, page=page, limit=limit
    )
    meta = {
        "totalItems": total,
        "itemCount": len(items),
        "itemsPerPage": limit,
        "totalPages": math.ceil(total / limit),
        "currentPage": page,
    }
    return json_response({"items": items, "meta": meta})


@routes.get("/v1/assets/{assetId}")
async def get_asset(request: web.Request) -> web.Response:
    """One asset; 404 when unknown, malformed or expired."""
    services = request.app[SERVICES]
    return json_response(await asset_store(services).require(request.match_info["assetId"]))
