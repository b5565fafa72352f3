"""The init service's secrets (infra/init/stack_init.py): generated once, kept, a value set in
.env wins, each service's volume gets only its own. No database: steps 2 and 3 need the stack
(infra/smoke.sh)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from mlops.settings import PLACEHOLDER_SECRETS

SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "init" / "stack_init.py"


@pytest.fixture
def init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("stack_init", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "stack_init", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "ALL", tmp_path / "all")
    monkeypatch.setattr(module, "Path", lambda p: tmp_path / Path(p).relative_to("/"))
    return module


def test_secrets_are_generated_once_then_kept_and_a_given_one_wins(init: ModuleType) -> None:
    values, previous, generated = init.resolve_secrets({})
    assert sorted(generated) == sorted(s.name for s in init.SECRETS)
    assert len(set(values.values())) == len(values)  # every one its own
    assert all(len(v) >= 32 for v in values.values())

    again, previous, generated = init.resolve_secrets({})
    assert (again, previous, generated) == (values, {}, [])

    chosen, previous, generated = init.resolve_secrets({"POSTGRES_PASSWORD": "from .env"})
    assert chosen["postgres_password"] == "from .env"
    assert previous == {"postgres_password": values["postgres_password"]}  # to rotate with
    assert generated == []
    assert init.resolve_secrets({})[0]["postgres_password"] == "from .env"  # kept from now on


def test_each_service_gets_only_its_own(init: ModuleType, tmp_path: Path) -> None:
    values, _, _ = init.resolve_secrets({})
    services = (
        "postgres",
        "mlflow",
        "trainer",
        "api",
        "dashboard",
        "redis",
        "sink",
        "replay",
        "alertmanager",
    )
    for service in services:
        (tmp_path / "secrets" / service).mkdir(parents=True)
    init.hand_out(values, {"POSTGRES_DB": "mlops"})
    seen = {
        service: {p.name: p.read_text() for p in (tmp_path / "secrets" / service).iterdir()}
        for service in services
    }
    assert seen["postgres"] == {"postgres_password": values["postgres_password"]}
    stream_url = f"redis://:{values['redis_password']}@redis:6379/0"
    assert seen["api"] == {
        "mlflow_password": values["mlflow_api_password"],
        "admin_token": values["admin_token"],
        "events_token": values["events_token"],
        "events_stream_url": stream_url,
    }
    assert seen["redis"] == {"redis_password": values["redis_password"]}
    assert seen["sink"] == {
        "events_stream_url": stream_url,
        "lock_url": seen["trainer"]["lock_url"],
    }
    assert seen["replay"] == {"events_token": values["events_token"]}
    # the scheduler (a trainer) checks the token Alertmanager sends, and only that
    assert seen["alertmanager"] == {"webhook_token": values["webhook_token"]}
    assert seen["trainer"]["webhook_token"] == values["webhook_token"]
    assert seen["trainer"]["lock_url"].startswith("postgresql://retrain_lock:")
    assert seen["dashboard"]["optuna_storage"].startswith("postgresql+psycopg://dashboard:")
    superuser = values["postgres_password"]
    assert all(superuser not in v for s in services[1:] for v in seen[s].values())


@pytest.mark.parametrize("placeholder", ["change-me", "CHANGEME", "password"])
def test_a_placeholder_from_env_is_refused(init: ModuleType, placeholder: str) -> None:
    with pytest.raises(SystemExit, match=r"MLFLOW_FLASK_SERVER_SECRET_KEY is .* a placeholder"):
        init.resolve_secrets({"MLFLOW_FLASK_SERVER_SECRET_KEY": placeholder})
    assert init.PLACEHOLDER_SECRETS == PLACEHOLDER_SECRETS  # what every service refuses too
