"""The compose stack is closed by default, read from `docker compose config` (the file as Docker
resolves it, anchors and variables applied) for every profile: ports on 127.0.0.1 unless
MLOPS_PUBLISH_ADDRESS opens them, no secret with a default, no credential on a command line.
Seconds, no engine needed: `config` only resolves the file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROFILES = (
    "",
    "distributed",
    "gpu",
    "dashboard",
    "replay",
    "monitoring",
)  # "": the default services alone
# What a user may set in .env to choose a secret (the init service generates the rest)
USER_SECRETS = (
    "POSTGRES_PASSWORD",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_TRAINER_PASSWORD",
    "MLFLOW_API_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "MLOPS_SERVE__ADMIN_TOKEN",
    "MLOPS_EVENTS__TOKEN",
)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|STORAGE$|_URL$|BACKEND_STORE_URI$")
CREDENTIALS_IN_URL = re.compile(r"://[^/@\s:]+:[^/@\s]+@")
PLACEHOLDERS = ("change-me", "changeme", "changethis")


def _compose_version() -> str | None:
    if shutil.which("docker") is None:
        return None
    done = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


pytestmark = pytest.mark.skipif(
    _compose_version() is None,
    reason="needs `docker compose` (v2); ../shared/docker/setup-engine.sh installs it",
)


@cache
def config(profile: str, **variables: str) -> dict[str, Any]:
    """The resolved file with only `variables` set: no .env, none of this shell's settings."""
    environment = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_HOST")}
    options = ["--profile", profile] if profile else []
    done = subprocess.run(
        ["docker", "compose", "--env-file", os.devnull, *options, "config", "--format", "json"],
        cwd=ROOT,
        env=environment | variables,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def services(profile: str, **variables: str) -> dict[str, dict[str, Any]]:
    return config(profile, **variables)["services"]


def published(service: dict[str, Any]) -> list[dict[str, Any]]:
    return [port for port in service.get("ports", []) if port.get("published")]


def command_lines(service: dict[str, Any]) -> str:
    """Everything that ends up in a process's argv or `docker inspect`'s Cmd/Entrypoint."""
    parts = [service.get("command"), service.get("entrypoint")]
    parts.append((service.get("healthcheck") or {}).get("test"))
    return json.dumps(parts)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_port_is_published_on_loopback_only(profile: str) -> None:
    ports = {name: published(s) for name, s in services(profile).items() if published(s)}
    assert ports, "no published port: the test would check nothing"
    for name, service_ports in ports.items():
        for port in service_ports:
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond loopback"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("address", ["0.0.0.0", "192.0.2.10"])
def test_one_variable_opens_every_port(profile: str, address: str) -> None:
    opened = services(profile, MLOPS_PUBLISH_ADDRESS=address)
    closed = services(profile)
    for name, service in opened.items():
        assert len(published(service)) == len(published(closed[name]))
        for port in published(service):
            assert port.get("host_ip") == address, f"{name} ignores MLOPS_PUBLISH_ADDRESS"


@pytest.mark.parametrize("profile", PROFILES)
def test_no_secret_has_a_default(profile: str) -> None:
    """With nothing set, every secret is empty (init generates it) or a file to read."""
    resolved = json.dumps(config(profile)).lower()
    assert not [p for p in PLACEHOLDERS if p in resolved], "a placeholder secret"
    for name, service in services(profile).items():
        for variable, value in (service.get("environment") or {}).items():
            value = value or ""
            assert not CREDENTIALS_IN_URL.search(value), f"{name}: {variable} carries a password"
            if variable.endswith("_FILE"):
                assert value.startswith("/run/secrets/"), f"{name}: {variable}={value!r}"
            elif SECRET_NAME.search(variable):
                assert value == "", f"{name}: {variable} defaults to {value!r}"


@pytest.mark.parametrize("profile", PROFILES)
def test_a_secret_set_in_env_reaches_init_alone(profile: str) -> None:
    """The user's value wins (init stores it); no other service sees it in its config."""
    chosen = {variable: f"chosen-{variable.lower()}-value" for variable in USER_SECRETS}
    resolved = services(profile, **chosen)
    init = resolved["init"]["environment"]
    assert all(init[variable] == value for variable, value in chosen.items())
    for name, service in resolved.items():
        seen = json.dumps(service) if name != "init" else command_lines(service)
        leaked = [variable for variable, value in chosen.items() if value in seen]
        assert not leaked, f"{name} has {leaked} in its configuration"


@pytest.mark.parametrize("profile", PROFILES)
def test_no_credential_on_a_command_line(profile: str) -> None:
    chosen = {variable: f"chosen-{variable.lower()}-value" for variable in USER_SECRETS}
    for name, service in services(profile, **chosen).items():
        argv = command_lines(service)
        assert not CREDENTIALS_IN_URL.search(argv), f"{name}: a URL with a password: {argv}"
        assert "chosen-" not in argv, f"{name}: a secret on its command line: {argv}"
        assert not re.search(r"password[=:]\S", argv, re.IGNORECASE), f"{name}: {argv}"


@pytest.mark.parametrize("profile", PROFILES)
def test_each_service_mounts_only_its_own_secrets(profile: str) -> None:
    """init alone holds every secret; the others get their own volume, read-only."""
    for name, service in services(profile).items():
        volumes = [v for v in service.get("volumes", []) if v["source"].startswith("secrets")]
        if name == "init":
            assert any(v["source"] == "secrets" for v in volumes)
            continue
        assert all(v["source"] != "secrets" for v in volumes), f"{name} mounts every secret"
        assert all(v.get("read_only") for v in volumes), f"{name} may write its secrets"
        assert len(volumes) <= 1, f"{name} mounts several services' secrets: {volumes}"


def test_mlflow_requires_a_login_and_the_services_have_their_own() -> None:
    resolved = services("")
    assert "--app-name=basic-auth" in resolved["mlflow"]["command"]
    users = {
        name: resolved[name]["environment"].get("MLFLOW_TRACKING_USERNAME")
        for name in ("api", "trainer", "scheduler")
    }
    assert users == {"api": "api", "trainer": "trainer", "scheduler": "trainer"}
