"""The deploy kit's dashboard and alert rules read only series genrelay exports (checked against a
real ``/metrics`` scrape), and the exported names follow Prometheus's naming rules: checked here
everywhere, and by ``promtool check metrics`` / ``promtool check rules`` where promtool is installed."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from asyncio.subprocess import PIPE
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from daemon.settings import Settings
from daemon.web.app import create_app

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "genrelay-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "genrelay-alerts.yml"
SERIES = re.compile(r"\b(genrelay_[a-z0-9_]+)\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = "promtool is not installed (Debian: apt-get install prometheus); the naming test still runs"


@pytest.fixture
async def scrape(
    make_settings: Callable[..., Settings], redis_url: str, aiohttp_client: AiohttpClient
) -> str:
    client = await aiohttp_client(create_app(make_settings(), redis_url))
    resp = await client.get("/metrics")
    assert resp.status == 200
    text: str = await resp.text()
    return text


def families(text: str) -> dict[str, str]:
    """Exported family names (without a counter's ``_total``) and their type."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def exported_series(text: str) -> set[str]:
    return {name + suffix for name, kind in families(text).items() for suffix in SUFFIXES.get(kind, ("",))}


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def alert_expressions() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [str(rule["expr"]) for group in groups for rule in group["rules"]]


def test_the_dashboard_and_the_alerts_have_expressions() -> None:
    assert len(dashboard_expressions()) >= 10
    assert len(alert_expressions()) >= 8


async def test_every_expression_names_only_exported_series(scrape: str) -> None:
    exported = exported_series(scrape)
    for where, expressions in (("dashboard", dashboard_expressions()), ("alerts", alert_expressions())):
        for expr in expressions:
            named = set(SERIES.findall(expr))
            assert named, f"{where}: {expr!r} names no genrelay series"
            assert named <= exported, f"{where}: {expr!r} reads {sorted(named - exported)}, not exported"


async def test_exported_names_follow_the_naming_rules(scrape: str) -> None:
    """Counters end in _total (and only counters do), histograms and gauges carry no counter suffix,
    durations are in seconds, and no counter exports a _created series."""
    found = families(scrape)
    ours = {name: kind for name, kind in found.items() if name.startswith("genrelay_")}
    assert len(ours) >= 15, sorted(ours)
    for name, kind in ours.items():
        assert re.fullmatch(r"genrelay_[a-z][a-z0-9_]*", name), name
        assert not name.endswith(("_total", "_count", "_sum", "_bucket", "_created")), (name, kind)
        if kind == "histogram":
            assert name.endswith("_seconds"), name
    assert not any(line.split("{")[0].endswith("_created") for line in scrape.splitlines()), (
        "a _created series"
    )
    counters = [
        line for line in scrape.splitlines() if line.startswith("# TYPE genrelay_") and "counter" in line
    ]
    assert counters, "no counter exported"


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
async def test_promtool_check_metrics_passes_on_a_real_scrape(scrape: str) -> None:
    assert PROMTOOL is not None
    process = await asyncio.create_subprocess_exec(
        PROMTOOL, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=PIPE
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate(scrape.encode())
    complaints = (out + err).decode().strip()
    assert process.returncode == 0 and not complaints, complaints


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_check_rules_passes() -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_is_importable_unedited() -> None:
    """A datasource variable instead of a fixed uid, unique panel ids, a target on every panel."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    names = [variable["name"] for variable in dashboard["templating"]["list"]]
    assert "datasource" in names
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
