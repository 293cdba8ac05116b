"""The OpenAPI schemas and the validator of ``POST /v1/jobs`` agree, and real answers match the
response schemas. Nothing here lists fields by hand: the request bodies are built from the schema in
``/openapi.json``, the fields from the msgspec structs, and the answers come from a live app."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import jsonschema_rs
import msgspec
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from daemon import keys
from daemon.api_models import FIELD_RULES, Job, JobRequest
from daemon.errors import InvalidRequest
from daemon.settings import Settings
from daemon.web.app import create_app
from daemon.web.openapi import build_document
from emulator.config import EmulatorConfig
from tests.conftest import API_KEYS, Emulator

Schema = dict[str, Any]
DOCUMENT = build_document()
COMPONENTS: dict[str, Schema] = DOCUMENT["components"]["schemas"]
REQUEST_SCHEMA = COMPONENTS["JobRequest"]


def resolve(schema: Schema) -> Schema:
    while "$ref" in schema:
        schema = COMPONENTS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def non_null(schema: Schema) -> Schema:
    """The typed branch of a nullable property (``anyOf: [X, null]``)."""
    schema = resolve(schema)
    branches = [branch for branch in schema.get("anyOf", [schema]) if branch.get("type") != "null"]
    assert len(branches) == 1, schema
    return resolve(branches[0])


def validator(component: str) -> jsonschema_rs.Validator:
    """A JSON Schema validator for one component, its $refs resolved inside the document."""
    return jsonschema_rs.validator_for(
        {"$ref": f"#/components/schemas/{component}", "components": {"schemas": COMPONENTS}}
    )


def kind_of(schema: Schema) -> str:
    """The JSON type of a property; an ``enum`` of strings is a string."""
    if "enum" in schema and "type" not in schema:
        assert all(isinstance(choice, str) for choice in schema["enum"]), schema
        return "string"
    kind: str = schema["type"]
    return kind


def valid_value(schema: Schema) -> Any:
    """A value the property's schema allows, and not its default (so the test sees it kept)."""
    schema = non_null(schema)
    if "examples" in schema:
        return schema["examples"][0]
    kind = kind_of(schema)
    if kind == "string":
        assert "pattern" not in schema, f"give a patterned property an example: {schema}"
        return "v" * max(schema.get("minLength", 1), 3)
    if kind == "integer":
        return schema.get("maximum", 7)
    if kind == "boolean":
        return not schema.get("default", False)
    assert kind == "object", schema
    return {"prompt": "from the schema"}


def invalid_values(schema: Schema) -> Iterator[Any]:
    """Values the property's schema forbids: another type, and each bound crossed."""
    schema = non_null(schema)
    kind = kind_of(schema)
    yield {"string": 7, "integer": "7", "boolean": "yes", "object": ["x"]}[kind]
    if kind == "integer":
        yield True
        yield 2.5
    if kind in ("string", "boolean", "integer"):
        yield {"an": "object"}
    if "minLength" in schema:
        yield "" if schema["minLength"] == 1 else "v" * (schema["minLength"] - 1)
    if "maxLength" in schema:
        base = valid_value(schema)
        yield base + "v" * (schema["maxLength"] + 1 - len(base))
    if "pattern" in schema:
        yield "nope://" + "v" * 3
    if "enum" in schema:
        yield "not-" + schema["enum"][0]
    if "minimum" in schema:
        yield schema["minimum"] - 1
    if "maximum" in schema:
        yield schema["maximum"] + 1


def full_request() -> dict[str, Any]:
    """A request body with every property the schema has, each set to an allowed value."""
    return {name: valid_value(prop) for name, prop in REQUEST_SCHEMA["properties"].items()}


def decoded(request: JobRequest) -> dict[str, Any]:
    """The request as the validator kept it, under the wire names."""
    kept: dict[str, Any] = msgspec.to_builtins(request)
    return kept


# --- the request: schema and validator --------------------------------------------------------------------


def test_the_schema_names_exactly_the_fields_the_validator_accepts() -> None:
    """Every field of the struct is a schema property with the same requiredness, and no more; every
    field has a refusal message naming it."""
    fields = msgspec.structs.fields(JobRequest)
    assert {f.encode_name for f in fields} == set(REQUEST_SCHEMA["properties"])
    assert {f.encode_name for f in fields if f.required} == set(REQUEST_SCHEMA["required"])
    assert set(FIELD_RULES) == {f.encode_name for f in fields}


def test_unknown_fields_are_refused_by_both() -> None:
    assert REQUEST_SCHEMA["additionalProperties"] is False
    body = {**full_request(), "colour": "red", "size": 3}
    assert not validator("JobRequest").is_valid(body)
    with pytest.raises(InvalidRequest, match=re.escape("unknown field(s): colour, size")):
        JobRequest.from_json(body)


def test_a_body_with_every_schema_property_is_accepted_and_kept() -> None:
    body = full_request()
    assert validator("JobRequest").is_valid(body)
    assert decoded(JobRequest.from_json(body)) == body


@pytest.mark.parametrize("name", sorted(REQUEST_SCHEMA["properties"]))
def test_each_property_alone_is_accepted_and_its_default_is_the_schemas(name: str) -> None:
    """The required properties plus ``name``: accepted; each property left out takes the default the
    schema declares."""
    required = {
        field: valid_value(REQUEST_SCHEMA["properties"][field]) for field in REQUEST_SCHEMA["required"]
    }
    body = {**required, name: valid_value(REQUEST_SCHEMA["properties"][name])}
    kept = decoded(JobRequest.from_json(body))
    assert kept[name] == body[name]
    for other, prop in REQUEST_SCHEMA["properties"].items():
        if other not in body:
            assert kept[other] == prop["default"], other


@pytest.mark.parametrize("name", sorted(REQUEST_SCHEMA["properties"]))
def test_what_the_schema_forbids_the_validator_refuses_naming_the_field(name: str) -> None:
    schema_check = validator("JobRequest")
    for value in invalid_values(REQUEST_SCHEMA["properties"][name]):
        body = {**full_request(), name: value}
        assert not schema_check.is_valid(body), (name, value)
        with pytest.raises(InvalidRequest) as refused:
            JobRequest.from_json(body)
        assert f"'{name}'" in refused.value.message, (name, value, refused.value.message)


@pytest.mark.parametrize("name", sorted(REQUEST_SCHEMA["required"]))
def test_a_missing_required_property_is_refused_by_both(name: str) -> None:
    body = {field: value for field, value in full_request().items() if field != name}
    assert not validator("JobRequest").is_valid(body)
    with pytest.raises(InvalidRequest, match=f"'{name}' is required"):
        JobRequest.from_json(body)


def test_the_document_example_is_a_valid_request() -> None:
    for example in REQUEST_SCHEMA["examples"]:
        assert validator("JobRequest").is_valid(example)
        JobRequest.from_json(example)


async def test_the_api_accepts_every_schema_property(
    redis_client: aioredis.Redis,
    redis_url: str,
    make_settings: Callable[..., Settings],
    aiohttp_client: AiohttpClient,
) -> None:
    """Over HTTP: a body with every property (provider, operation, account set to configured ones) is
    queued, and the job keeps what it was sent. No worker runs, so nothing is delivered to replyUrl."""
    client = await aiohttp_client(create_app(make_settings(), redis_url))
    body = {**full_request(), **REQUEST_SCHEMA["examples"][0], "account": "a1"}
    resp = await client.post("/v1/jobs", json=body)
    assert resp.status == 202, await resp.text()
    job = await (await client.get(f"/v1/jobs/{(await resp.json())['jobId']}")).json()
    assert validator("Job").is_valid(job)
    for name in ("provider", "operation", "params", "replyUrl", "replyRef", "priority"):
        assert job[name] == body[name], name
    stored = await redis_client.hgetall(keys.job_key(job["jobId"]))
    assert (stored["pinned"], stored["notify_progress"]) == ("a1", "1")  # not part of the answer


# --- the answers: real records against the response schemas -----------------------------------------------


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(keys={API_KEYS["a1"]: 2}, job_seconds=60)


@pytest.fixture
async def relay(
    emulator: Emulator,
    make_settings: Callable[..., Settings],
    open_daemon: Callable[..., Any],
    start_worker: Callable[..., Any],
    redis_url: str,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    settings = make_settings(emulator.url)
    await open_daemon(settings)
    await start_worker(settings)
    client = TestClient(TestServer(create_app(settings, redis_url), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def wait_for_event(redis: aioredis.Redis, job_id: str, state: str) -> None:
    last = "0-0"
    while True:
        for _, entries in await redis.xread({keys.events_key("ltx"): last}, block=1000, count=500):
            for entry_id, fields in entries:
                last = entry_id
                if fields["job"] == job_id and fields["state"] == state:
                    return


async def test_a_canceled_jobs_record_matches_the_response_schemas(
    relay: TestClient[web.Request, web.Application], redis_client: aioredis.Redis
) -> None:
    """A job run at the provider, then canceled there (so it carries cancelNote): every key of its
    record is a property of the Job schema and of the struct, the record validates against the
    schema, and so do the DELETE answer and the listing."""
    body = {**REQUEST_SCHEMA["examples"][0], "replyRef": "r-1", "requestId": "schema-check"}
    resp = await relay.post("/v1/jobs", json=body)
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["jobId"]
    async with asyncio.timeout(30):
        await wait_for_event(redis_client, job_id, "active")
    canceled = await relay.delete(f"/v1/jobs/{job_id}")
    assert canceled.status == 200
    assert validator("CanceledJob").is_valid(await canceled.json())
    async with asyncio.timeout(30):
        await wait_for_event(redis_client, job_id, "provider_canceled")

    record = await (await relay.get(f"/v1/jobs/{job_id}")).json()
    assert record["cancelNote"], record
    job_schema = COMPONENTS["Job"]
    assert (
        set(record) == set(job_schema["properties"]) == {f.encode_name for f in msgspec.structs.fields(Job)}
    )
    assert set(record["status"]) <= set(COMPONENTS["JobStatus"]["properties"])
    errors = [error.message for error in validator("Job").iter_errors(record)]
    assert not errors, errors
    msgspec.convert(record, Job)  # the struct the schema came from takes it too

    page = await (await relay.get("/v1/jobs")).json()
    assert validator("JobPage").is_valid(page)
    assert validator("Capacity").is_valid(await (await relay.get("/v1/scheduler/available")).json())
    refused = await relay.post("/v1/jobs", data=orjson.dumps({"provider": "ltx"}))
    assert refused.status == 415 and validator("Error").is_valid(await refused.json())
