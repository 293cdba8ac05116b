"""``GET /openapi.json``: it names every route the app serves, and a live server answers as it says
(schemathesis generates the requests from the document)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from pytest_aiohttp import AiohttpClient
from schemathesis.checks import CheckFunction
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from daemon.settings import Settings
from daemon.web.app import create_app, serve
from daemon.web.openapi import build_document
from tests.conftest import process_env

TOKEN = "openapi-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "options", "trace"})


def registered_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route, HEAD aside (aiohttp adds it to every GET)."""
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def documented_routes(document: dict[str, object]) -> set[tuple[str, str]]:
    paths = document["paths"]
    assert isinstance(paths, dict)
    return {(method, path) for path, item in paths.items() for method in item if method in HTTP_METHODS}


def test_every_registered_route_is_documented(make_settings: Callable[..., Settings], redis_url: str) -> None:
    """A route added to the app without an entry in daemon/web/openapi.py PATHS fails here."""
    app = create_app(make_settings(), redis_url)
    missing = registered_routes(app) - documented_routes(build_document())
    assert not missing, f"add these routes to PATHS in daemon/web/openapi.py: {sorted(missing)}"


def test_every_documented_route_exists(make_settings: Callable[..., Settings], redis_url: str) -> None:
    """The document describes no route the app has dropped (or never had)."""
    app = create_app(make_settings(), redis_url)
    stale = documented_routes(build_document()) - registered_routes(app)
    assert not stale, f"these PATHS entries have no route: {sorted(stale)}"


def test_api_routes_need_the_bearer_token_and_every_error_has_the_error_shape() -> None:
    """/v1/* declares bearerAuth; every JSON 4xx/5xx answer refers to the Error schema."""
    document = build_document()
    for path, item in document["paths"].items():
        for method, spec in item.items():
            if path.startswith("/v1/"):
                assert spec["security"] == [{"bearerAuth": []}], (method, path)
            assert "500" in spec["responses"], (method, path)
            for status, response in spec["responses"].items():
                json_schema = response.get("content", {}).get("application/json", {}).get("schema")
                if int(status) >= 400 and json_schema is not None:
                    assert "Error" in str(json_schema) or "NotReady" in str(json_schema), (
                        method,
                        path,
                        status,
                    )


async def test_the_document_is_served_as_json(
    aiohttp_client: AiohttpClient,
    make_settings: Callable[..., Settings],
    redis_url: str,
    redis_client: aioredis.Redis,
) -> None:
    """The route serves the same document, without a bearer token even when tokens are set."""
    client = await aiohttp_client(create_app(make_settings(GENRELAY_API_TOKENS=TOKEN), redis_url))
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    served = await response.json()
    assert served["openapi"].startswith("3.1")
    assert served == build_document()


# --- schemathesis against a live server -------------------------------------------------------------


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[str]:
    """``serve`` on a loopback port in its own thread and event loop, so that schemathesis' blocking
    HTTP client can call it; tokens are set, as in production."""
    tmp_path: Path = tmp_path_factory.mktemp("openapi")
    env = process_env(tmp_path, redis_url, "http://127.0.0.1:9", GENRELAY_API_TOKENS=TOKEN, GENRELAY_PORT="0")
    app_settings = Settings.from_env(env)
    sync_client = redis.Redis.from_url(redis_url)
    sync_client.flushdb()
    sync_client.close()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()
    address: list[str] = []

    def on_ready(url: str) -> None:
        address.append(url)
        ready.set()

    def run() -> None:
        try:
            loop.run_until_complete(serve(app_settings, redis_url, on_ready=on_ready, stop=stop))
        finally:
            ready.set()  # a server that failed to start must not leave the fixture waiting

    thread = threading.Thread(target=run, name="live-api", daemon=True)
    thread.start()
    ready.wait(30)
    assert address, "the web server did not start"
    try:
        yield address[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


CHECKS: list[CheckFunction] = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

schema = schemathesis.openapi.from_dict(build_document())


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_live_api_answers_as_documented(case: schemathesis.Case, live_api: str) -> None:
    """No 5xx, and every status, content type and body is one the document declares."""
    response = case.call(base_url=live_api, headers=AUTH, timeout=10)
    case.validate_response(response, checks=CHECKS)


def test_the_success_answers_match_the_document(live_api: str) -> None:
    """Generated requests rarely name a configured provider, so the 2xx shapes of a job, a page of
    jobs and the capacity are checked here on purpose, with a job queued from the document's example."""
    body = {**build_document()["components"]["schemas"]["JobRequest"]["examples"][0], "replyRef": "r-1"}
    created = call_and_check(make_case("/v1/jobs", "POST", body=body), live_api, expect=202)
    job_id = created.json()["jobId"]
    job = call_and_check(
        make_case("/v1/jobs/{jobId}", "GET", path_parameters={"jobId": job_id}), live_api, expect=200
    )
    assert job.json()["replyRef"] == "r-1"
    page = call_and_check(make_case("/v1/jobs", "GET", query={"limit": 5}), live_api, expect=200)
    assert job_id in [item["jobId"] for item in page.json()["items"]]
    capacity = call_and_check(make_case("/v1/scheduler/available", "GET"), live_api, expect=200)
    assert [entry["email"] for entry in capacity.json()["available"]] == ["a1"]


def make_case(path: str, method: str, **parts: Any) -> schemathesis.Case:
    return schema.make_case(operation=schema[path][method], **parts)


def call_and_check(case: schemathesis.Case, base_url: str, *, expect: int) -> requests.Response:
    response = case.call(base_url=base_url, headers=AUTH, timeout=10)
    case.validate_response(response, checks=CHECKS)
    assert response.status_code == expect, response.text
    return response
