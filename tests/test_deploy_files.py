"""The files in deploy/ parse, run the Procfile's commands, name only real subcommands and settings,
and (where the tools exist here) pass ``systemd-analyze verify`` and ``kubectl kustomize``; the Redis
config loads in redis-server and passes genrelay's own start-up check."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.cli import build_parser
from daemon.embedded_redis import HOST, EmbeddedRedis, embedded_server_binary
from daemon.redis_connection import connect
from daemon.settings import Settings
from daemon.startup_checks import check_redis

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
UNITS = {"web": SYSTEMD / "genrelay-web.service", "worker": SYSTEMD / "genrelay-worker@.service"}
INSTALLED_BINARY = "/opt/genrelay/venv/bin/genrelay"


def procfile() -> dict[str, list[str]]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip():
            name, _, command = line.partition(":")
            entries[name.strip()] = shlex.split(command)
    return entries


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return loaded


def k8s_documents() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in k8s_documents() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}"
    return found[0]


def only_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def dockerfile_cmd() -> list[str]:
    lines = [line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    command: list[str] = json.loads(lines[-1].removeprefix("CMD "))
    return command


def unit_exec_start(path: Path) -> list[str]:
    (line,) = [line for line in path.read_text().splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


# --- every named command is a real one -------------------------------------------------------------


def genrelay_commands() -> Iterator[tuple[str, list[str]]]:
    """(where, argv) of every ``genrelay ...`` command line the deploy files and the Procfile run."""
    for name, argv in procfile().items():
        yield f"Procfile {name}", argv
    yield "Dockerfile CMD", dockerfile_cmd()
    for name, service in compose()["services"].items():
        for argv in (service.get("command"), service.get("healthcheck", {}).get("test", [None])[1:]):
            if argv:
                yield f"compose {name}", list(argv)
    for doc in k8s_documents():
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                yield f"k8s {doc['metadata']['name']}", container["command"] + container.get("args", [])
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    if "exec" in container.get(probe, {}):
                        yield f"k8s {doc['metadata']['name']} {probe}", container[probe]["exec"]["command"]
    for name, path in UNITS.items():
        argv = unit_exec_start(path)
        yield f"systemd {name}", ["genrelay", *argv[1:]] if argv[0].endswith("/genrelay") else argv


def test_every_genrelay_command_parses_with_the_real_cli() -> None:
    """A misspelt subcommand or option in any deploy file (``genrelay wroker``) fails here."""
    parser = build_parser()
    seen = set()
    for where, argv in genrelay_commands():
        if argv[0] != "genrelay":
            continue
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors):
            try:
                parser.parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f"{where}: {shlex.join(argv)} is not a genrelay command: {errors.getvalue()}")
        seen.add(shlex.join(argv))
    expected = {"genrelay web", "genrelay worker", "genrelay worker --check"}
    assert expected <= seen
    assert "genrelay emulator --host 0.0.0.0 --accept-any-key" in seen


def test_the_procfile_commands_are_the_ones_deployed() -> None:
    """Dockerfile, compose, Kubernetes and systemd run exactly the Procfile's web and worker."""
    entries = procfile()
    assert set(entries) == {"web", "worker"}
    assert dockerfile_cmd() == entries["web"]
    services = compose()["services"]
    for kind in ("web", "worker"):
        replicas = [service for name, service in services.items() if name.startswith(f"{kind}-")]
        assert len(replicas) == 2
        assert all(service["command"] == entries[kind] for service in replicas)
        deployment = k8s_object("Deployment", f"genrelay-{kind}")
        assert only_container(deployment)["command"] == entries[kind]
        assert ["genrelay", *unit_exec_start(UNITS[kind])[1:]] == entries[kind]


# --- compose --------------------------------------------------------------------------------------------


def test_compose_runs_redis_with_the_config_and_a_password_from_the_environment() -> None:
    """Redis gets deploy/redis.conf and a required password; every genrelay container gets the env
    file, the password-bearing URL and the accounts file; the emulator only on its profile."""
    services = compose()["services"]
    redis = services["redis"]
    assert "./redis.conf:/usr/local/etc/redis/redis.conf:ro" in redis["volumes"]
    assert "--requirepass" in " ".join(redis["command"])
    assert "${REDIS_PASSWORD:?" in redis["environment"]["REDIS_PASSWORD"]
    for name in ("web-1", "web-2", "worker-1", "worker-2"):
        service = services[name]
        assert service["env_file"] == [".env"]
        assert "${REDIS_PASSWORD" in service["environment"]["GENRELAY_REDIS_URL"]
        assert any(volume.endswith(":/etc/genrelay/accounts.toml:ro") for volume in service["volumes"])
        assert service["restart"] == "unless-stopped"
    assert services["emulator"]["profiles"] == ["emulator"]


# --- Kubernetes -----------------------------------------------------------------------------------------


def test_every_k8s_manifest_is_yaml_with_kind_and_name() -> None:
    """Each file parses as (multi-document) YAML and each object is a named genrelay object."""
    files = sorted(K8S.glob("*.yaml"))
    assert {path.name for path in files} >= {"configmap.yaml", "web.yaml", "worker.yaml"}
    for doc in k8s_documents():
        assert doc["apiVersion"] and doc["kind"], doc
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"].startswith("genrelay-")


def test_k8s_scrapes_the_worker_metrics_port_and_limits_disruptions() -> None:
    """The worker's counters live only in its process: its pods expose and annotate the metrics port
    the ConfigMap sets; a PodDisruptionBudget covers the web and the worker."""
    port = k8s_object("ConfigMap", "genrelay-env")["data"]["GENRELAY_WORKER_METRICS_PORT"]
    template = k8s_object("Deployment", "genrelay-worker")["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == port
    assert {"name": "metrics", "containerPort": int(port)} in only_container(
        {"spec": {"template": template}}
    )["ports"]
    for name in ("genrelay-web", "genrelay-worker"):
        selector = k8s_object("PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"]
        assert selector == k8s_object("Deployment", name)["spec"]["selector"]["matchLabels"]


def test_the_sentinel_example_configures_genrelay_with_sentinels_only() -> None:
    example = yaml.safe_load((DEPLOY / "sentinel" / "docker-compose.yml").read_text())
    sentinels = [name for name in example["services"] if name.startswith("sentinel-")]
    assert len(sentinels) == 3
    for name in ("web", "worker"):
        env = example["services"][name]["environment"]
        assert "GENRELAY_REDIS_URL" not in env
        listed = {item.split(":")[0] for item in env["GENRELAY_REDIS_SENTINELS"].split(",")}
        assert listed == set(sentinels)
        assert set(env) <= known_settings()


def test_the_units_have_the_standard_hardening() -> None:
    for path in UNITS.values():
        text = path.read_text()
        for option in (
            "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
            "ReadWritePaths=/var/lib/genrelay", "PrivateDevices=yes", "RestrictSUIDSGID=yes",
        ):  # fmt: skip
            assert f"\n{option}\n" in text, f"{path.name} lacks {option}"


def test_k8s_probes_match_the_routes_and_the_worker_check() -> None:
    """Readiness on /readyz, liveness on /healthz, the Service selects the web pods, and the worker's
    liveness runs `genrelay worker --check`."""
    web = only_container(k8s_object("Deployment", "genrelay-web"))
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service = k8s_object("Service", "genrelay-web")
    assert (
        service["spec"]["selector"]
        == k8s_object("Deployment", "genrelay-web")["spec"]["selector"]["matchLabels"]
    )
    worker = only_container(k8s_object("Deployment", "genrelay-worker"))
    assert worker["livenessProbe"]["exec"]["command"] == ["genrelay", "worker", "--check"]


def test_k8s_accounts_parse_and_every_key_comes_from_a_secret(tmp_path: Path) -> None:
    """The accounts ConfigMap is a valid accounts file, and each Deployment fills every api_key_env
    (and the API tokens, and the Redis URL with its password) from a secretKeyRef, never a literal."""
    text = k8s_object("ConfigMap", "genrelay-accounts")["data"]["accounts.toml"]
    key_vars = {account["api_key_env"] for account in tomllib.loads(text)["account"]}
    (tmp_path / "accounts.toml").write_text(text)
    env = {"GENRELAY_ACCOUNTS": str(tmp_path / "accounts.toml"), **{name: "a-key" for name in key_vars}}
    assert Settings.from_env(env).accounts
    secret_needed = {
        "genrelay-web": key_vars | {"GENRELAY_API_TOKENS", "GENRELAY_REDIS_URL"},
        "genrelay-worker": key_vars | {"GENRELAY_REDIS_URL"},
    }
    for name, needed in secret_needed.items():
        container = only_container(k8s_object("Deployment", name))
        from_secret = {var["name"] for var in container["env"] if "secretKeyRef" in var.get("valueFrom", {})}
        assert needed <= from_secret, name
        assert not any("value" in var for var in container["env"]), "no literal values next to secrets"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_kustomization_builds() -> None:
    """``kubectl kustomize`` (offline) resolves every resource the kustomization lists."""
    built = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(built.stdout) if doc)
    assert kinds == [
        "ConfigMap", "ConfigMap", "Deployment", "Deployment",
        "PodDisruptionBudget", "PodDisruptionBudget", "Service",
    ]  # fmt: skip


# --- settings named in deploy files ---------------------------------------------------------------------


def known_settings() -> set[str]:
    """Every GENRELAY_* variable genrelay reads: the Settings fields and any literal in the code."""
    source = (ROOT / "daemon" / "settings.py").read_text() + (
        ROOT / "daemon" / "redis_settings.py"
    ).read_text()
    names = {"GENRELAY_" + suffix for suffix in re.findall(r'reader\.\w+\(\s*"([A-Z0-9_]+)"', source)}
    for path in [*ROOT.joinpath("daemon").rglob("*.py"), *ROOT.joinpath("workers").rglob("*.py")]:
        names |= set(re.findall(r'"(GENRELAY_[A-Z0-9_]+)"', path.read_text()))
    return names


def deployed_settings() -> dict[str, set[str]]:
    named: dict[str, set[str]] = {}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    named["Dockerfile"] = set(re.findall(r"\b(GENRELAY_[A-Z0-9_]+)=", dockerfile))
    for name, service in compose()["services"].items():
        named[f"compose {name}"] = set(service.get("environment", {}))
    for doc in k8s_documents():
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "genrelay-env":
            named["k8s genrelay-env"] = set(doc["data"])
        if doc["kind"] == "Deployment":
            container = only_container(doc)
            named[f"k8s {doc['metadata']['name']}"] = {var["name"] for var in container["env"]}
    for path in UNITS.values():
        named[path.name] = set(re.findall(r"^Environment=(GENRELAY_[A-Z0-9_]+)=", path.read_text(), re.M))
    return {where: {name for name in names if name.startswith("GENRELAY_")} for where, names in named.items()}


def test_deploy_files_name_only_settings_genrelay_reads() -> None:
    """A misspelt variable (GENRELAY_LOGFORMAT) would be ignored silently at run time; not here."""
    known = known_settings()
    assert "GENRELAY_REDIS_URL" in known and "GENRELAY_JOB_TIMEOUT" in known
    for where, names in deployed_settings().items():
        assert names <= known, f"{where} sets unknown {sorted(names - known)}"
    assert deployed_settings()["k8s genrelay-env"] >= {"GENRELAY_HOST", "GENRELAY_ACCOUNTS"}


def test_env_example_lists_every_setting() -> None:
    """deploy/env.example stays in step with Settings: every variable it reads is listed there."""
    source = (ROOT / "daemon" / "settings.py").read_text() + (
        ROOT / "daemon" / "redis_settings.py"
    ).read_text()
    settings = {"GENRELAY_" + suffix for suffix in re.findall(r'reader\.\w+\(\s*"([A-Z0-9_]+)"', source)}
    settings |= set(re.findall(r'"(GENRELAY_REDIS_[A-Z0-9_]+)"', source))
    listed = set(re.findall(r"^#?(GENRELAY_[A-Z0-9_]+)=", (DEPLOY / "env.example").read_text(), re.M))
    assert len(settings) > 20
    assert not settings - listed, f"add to deploy/env.example: {sorted(settings - listed)}"


# --- systemd --------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_systemd_units_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` with no complaint at all (it only warns on unknown keys). The
    install path is swapped for this virtualenv's genrelay, since verify checks that it exists."""
    binary = Path(sys.executable).parent / "genrelay"
    if not binary.exists():
        pytest.skip(f"no genrelay console script at {binary}")
    paths = []
    for source in UNITS.values():
        text = source.read_text()
        assert INSTALLED_BINARY in text
        target = tmp_path / source.name.replace("@.service", "@1.service")
        target.write_text(text.replace(INSTALLED_BINARY, str(binary)))
        paths.append(str(target))
    result = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_the_units_restart_on_failure_and_stop_with_sigterm() -> None:
    """Both units run as the dedicated user with the env file, restart on failure and stop gracefully."""
    for path in UNITS.values():
        lines = set(path.read_text().splitlines())
        expected = {
            "Restart=on-failure",
            "KillSignal=SIGTERM",
            "User=genrelay",
            "EnvironmentFile=/etc/genrelay/genrelay.env",
        }
        assert expected <= lines, path.name
        assert any(line.startswith("TimeoutStopSec=") for line in lines), path.name


# --- Redis configuration --------------------------------------------------------------------------------


class ConfiguredRedis(EmbeddedRedis):
    """A redis-server started from a config file, overriding only its address and where its files go."""

    def __init__(self, data_dir: Path, config: Path, binary: Path) -> None:
        super().__init__(data_dir)
        self.config = config
        self.binary = binary

    def command(self, port: int) -> list[str]:
        return [
            str(self.binary),
            str(self.config),
            *("--port", str(port), "--bind", HOST, "--dir", str(self.data_dir)),
            *("--unixsocket", str(self.socket_path), "--unixsocketperm", "700"),
            *("--logfile", str(self.data_dir / "redis.log"), "--pidfile", str(self.data_dir / "redis.pid")),
            *("--daemonize", "no"),
        ]


def redis_binaries() -> list[Any]:
    binaries: list[Any] = [pytest.param(embedded_server_binary(), id="redis-6.2-embedded")]
    debian = shutil.which("redis-server")
    if debian is not None and Path(debian).resolve() != embedded_server_binary().resolve():
        binaries.append(pytest.param(Path(debian), id="redis-server-on-path"))
    return binaries


@pytest.mark.parametrize("binary", redis_binaries())
async def test_redis_conf_loads_and_passes_the_startup_check(tmp_path: Path, binary: Path) -> None:
    """deploy/redis.conf is valid for the server and is exactly what genrelay's check asks for."""
    server = ConfiguredRedis(tmp_path / "redis", DEPLOY / "redis.conf", binary)
    server.start()
    client = await connect(server.url)
    try:
        assert await check_redis(client, embedded=False) == []
        assert (await client.config_get("appendfsync"))["appendfsync"] == "everysec"
        assert (await client.config_get("appendonly"))["appendonly"] == "yes"
    finally:
        await client.aclose()
        server.stop()
