#!/usr/bin/env python
"""The stack's one-shot `init` service: secrets, PostgreSQL roles, MLflow users. Idempotent.

    stack-init up     what `docker compose up` runs before anything else
    stack-init show   the secrets again (`docker compose run --rm --no-deps init show`)
    stack-init get mlflow_admin_password    one of them, alone (for scripts)

1. Secrets: a value the user set in .env wins; otherwise the one already on the `secrets`
   volume; otherwise a new one from `secrets` (shown once, in this service's log). Each service
   then gets only its own, as files on its own volume, and reads them through *_FILE variables:
   no credential in a command line, in `docker compose config` or in `docker inspect`.
2. PostgreSQL, as the superuser (whose password nobody else gets): one role per service with
   the least it needs: `mlflow` owns the mlflow database, `optuna` the optuna one,
   `retrain_lock` may only connect (advisory locks need no table rights), `dashboard` may only
   read optuna's tables.
3. MLflow's basic-auth store: `admin`, `trainer` (the trainer, scheduler and tuners: runs,
   versions, aliases) and `api` (reads only: MLflow's default permission is READ, and only the
   creator of an experiment or a model, or whoever is granted it, may change or delete it).
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    import psycopg

ALL = Path("/secrets/all")  # the init service's own copy of every secret
SERVICE_UID = 10001  # the `mlops` user of both images (infra/Dockerfile.*)
NOBODY_UID = 65534  # prom/alertmanager runs as `nobody`
AUTH_DB = "sqlite:////mlartifacts/basic_auth.db"  # as infra/mlflow/basic_auth.ini says
# Copied example values, not secrets: refused (the same set as mlops.settings refuses at each
# service's startup; this script runs where the project is not installed, a test keeps both equal)
PLACEHOLDER_SECRETS = frozenset({"change-me", "changeme", "changethis", "secret", "password"})


@dataclass(frozen=True)
class Secret:
    name: str  # its file under /secrets/all
    variable: str | None  # the .env variable that sets it; None: generated only
    shown: str  # what it is, for `show`


SECRETS = (
    Secret("mlflow_admin_password", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLflow UI/API user `admin`"),
    Secret("mlflow_trainer_password", "MLFLOW_TRAINER_PASSWORD", "MLflow user `trainer`"),
    Secret("mlflow_api_password", "MLFLOW_API_PASSWORD", "MLflow user `api` (read only)"),
    Secret("admin_token", "MLOPS_SERVE__ADMIN_TOKEN", "the API's /admin bearer token"),
    Secret("events_token", "MLOPS_EVENTS__TOKEN", "the API's /v1/events bearer token"),
    Secret("redis_password", None, "Redis (the events' stream)"),
    Secret("webhook_token", None, "the scheduler's alert webhook (Alertmanager's bearer token)"),
    Secret("postgres_password", "POSTGRES_PASSWORD", "PostgreSQL superuser (init only)"),
    Secret("mlflow_flask_secret_key", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLflow's Flask key"),
    Secret("db_mlflow_password", None, "PostgreSQL role `mlflow`"),
    Secret("db_optuna_password", None, "PostgreSQL role `optuna`"),
    Secret("db_lock_password", None, "PostgreSQL role `retrain_lock`"),
    Secret("db_dashboard_password", None, "PostgreSQL role `dashboard`"),
)


def log(message: str) -> None:
    print(f"[init] {message}", flush=True)  # noqa: T201 - a container's log is its stdout


def resolve_secrets(environ: dict[str, str]) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(values, the previous values of changed ones, the names generated now)."""
    ALL.mkdir(parents=True, exist_ok=True)
    ALL.chmod(0o700)
    values: dict[str, str] = {}
    previous: dict[str, str] = {}
    generated: list[str] = []
    for secret in SECRETS:
        path = ALL / secret.name
        kept = path.read_text().strip() if path.exists() else ""
        given = environ.get(secret.variable, "").strip() if secret.variable else ""
        if given.lower() in PLACEHOLDER_SECRETS:
            raise SystemExit(
                f"[init] {secret.variable} is {given!r}, a placeholder: set a real secret in "
                ".env (openssl rand -hex 32) or remove the line to have one generated"
            )
        value = given or kept
        if not value:
            value = secrets.token_urlsafe(24)  # 32 URL-safe characters: no quoting anywhere
            generated.append(secret.name)
        if kept and value != kept:
            previous[secret.name] = kept
        if value != kept:
            write(path, value, uid=0)
        values[secret.name] = value
    return values, previous, generated


def write(path: Path, value: str, uid: int) -> None:
    """Atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(value)
    if os.geteuid() == 0:  # as the service runs it; a test as a user keeps its own files
        os.chown(staged, uid, uid)
    staged.chmod(0o400)
    staged.replace(path)


def postgres_url(user: str, password: str, database: str, driver: str = "+psycopg") -> str:
    return f"postgresql{driver}://{user}:{quote(password, safe='')}@postgres:5432/{database}"


def redis_url(password: str) -> str:
    return f"redis://:{quote(password, safe='')}@redis:6379/0"


def hand_out(values: dict[str, str], environ: dict[str, str]) -> None:
    """Each service's volume gets only what that service reads."""
    lock_db = environ.get("POSTGRES_DB") or "mlops"
    files = {
        "postgres": {"postgres_password": values["postgres_password"]},
        "mlflow": {
            "backend_store_uri": postgres_url("mlflow", values["db_mlflow_password"], "mlflow"),
            "flask_secret_key": values["mlflow_flask_secret_key"],
            "admin_password": values["mlflow_admin_password"],
        },
        "trainer": {
            "mlflow_password": values["mlflow_trainer_password"],
            "optuna_storage": postgres_url("optuna", values["db_optuna_password"], "optuna"),
            "lock_url": postgres_url("retrain_lock", values["db_lock_password"], lock_db, ""),
            "webhook_token": values["webhook_token"],  # the scheduler's
        },
        "alertmanager": {"webhook_token": values["webhook_token"]},
        "api": {
            "mlflow_password": values["mlflow_api_password"],
            "admin_token": values["admin_token"],
            "events_token": values["events_token"],
            "events_stream_url": redis_url(values["redis_password"]),
        },
        "redis": {"redis_password": values["redis_password"]},
        # the sink: the stream, and the data lock (it writes bronze)
        "sink": {
            "events_stream_url": redis_url(values["redis_password"]),
            "lock_url": postgres_url("retrain_lock", values["db_lock_password"], lock_db, ""),
        },
        "replay": {"events_token": values["events_token"]},
        "dashboard": {
            "optuna_storage": postgres_url("dashboard", values["db_dashboard_password"], "optuna"),
        },
    }
    for service, contents in files.items():
        folder = Path("/secrets") / service
        if not folder.is_dir():  # a volume this run of the stack does not mount
            continue
        # the postgres and redis entrypoints read theirs as root; the others run as `mlops`
        uid = {"postgres": 0, "redis": 0, "alertmanager": NOBODY_UID}.get(service, SERVICE_UID)
        if os.geteuid() == 0:
            os.chown(folder, uid, uid)
        folder.chmod(0o700)
        for name, value in contents.items():
            path = folder / name
            if not path.exists() or path.read_text() != value:
                write(path, value, uid)


def connect_superuser(
    environ: dict[str, str], values: dict[str, str], previous: dict[str, str]
) -> psycopg.Connection:
    """The superuser's connection, waiting for the server; a password changed in .env is
    applied with the old one (the data directory still has it)."""
    import psycopg
    from psycopg import sql

    user = environ.get("POSTGRES_USER") or "mlops"
    candidates = [values["postgres_password"]]
    if "postgres_password" in previous:
        candidates.append(previous["postgres_password"])
    deadline = time.monotonic() + float(environ.get("INIT_WAIT_S", "180"))
    while True:
        for password in candidates:
            try:
                connection = psycopg.connect(
                    host="postgres", user=user, password=password, dbname="postgres",
                    autocommit=True, connect_timeout=5,
                )  # fmt: skip
            except psycopg.OperationalError as error:
                failure = error
                continue
            if password != values["postgres_password"]:
                connection.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(user), sql.Literal(values["postgres_password"])
                    )
                )
                log("the PostgreSQL superuser's password changed to the one in .env")
            return connection
        if time.monotonic() > deadline:
            raise SystemExit(f"[init] PostgreSQL did not accept the superuser: {failure}")
        time.sleep(2)


def create_roles(environ: dict[str, str], values: dict[str, str], previous: dict[str, str]) -> None:
    import psycopg
    from psycopg import sql

    lock_db = environ.get("POSTGRES_DB") or "mlops"
    roles = {
        "mlflow": values["db_mlflow_password"],
        "optuna": values["db_optuna_password"],
        "retrain_lock": values["db_lock_password"],
        "dashboard": values["db_dashboard_password"],
    }
    owners = {"mlflow": "mlflow", "optuna": "optuna"}
    with connect_superuser(environ, values, previous) as admin:
        for role, password in roles.items():
            exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            # NOSUPERUSER NOCREATEDB NOCREATEROLE are the defaults, said here for the reader
            admin.execute(
                sql.SQL(
                    verb + " ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}"
                ).format(sql.Identifier(role), sql.Literal(password))
            )
        for database, owner in owners.items():
            exists = admin.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if not exists:
                # UTF-8 whatever the server's locale: psycopg reads SQL_ASCII text as bytes
                admin.execute(
                    sql.SQL(
                        "CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0 "
                        "LC_COLLATE 'C' LC_CTYPE 'C'"
                    ).format(sql.Identifier(database), sql.Identifier(owner))
                )
            else:
                admin.execute(
                    sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                        sql.Identifier(database), sql.Identifier(owner)
                    )
                )
        for database in (*owners, lock_db):  # nobody connects unless granted below
            admin.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database))
            )
        admin.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO retrain_lock").format(sql.Identifier(lock_db))
        )
        admin.execute("GRANT CONNECT ON DATABASE optuna TO dashboard")
    user = environ.get("POSTGRES_USER") or "mlops"
    for database, owner in owners.items():
        with psycopg.connect(
            host="postgres", user=user, password=values["postgres_password"], dbname=database,
            autocommit=True,
        ) as connection:  # fmt: skip
            take_over(connection, owner)
            if database == "optuna":
                # optuna-dashboard reads; the tables the trainer's study creates later too
                for statement in (
                    "GRANT USAGE ON SCHEMA public TO dashboard",
                    "GRANT SELECT ON ALL TABLES IN SCHEMA public TO dashboard",
                    "ALTER DEFAULT PRIVILEGES FOR ROLE optuna IN SCHEMA public "
                    "GRANT SELECT ON TABLES TO dashboard",
                ):
                    connection.execute(statement)
    log(f"PostgreSQL roles: {', '.join(roles)} (least privilege; see infra/README.md)")


def take_over(connection: psycopg.Connection, owner: str) -> None:
    """Tables an earlier stack created as the superuser pass to the database's owner role."""
    from psycopg import sql

    rows = connection.execute(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')"
        " AND pg_get_userbyid(c.relowner) <> %s"
        " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'a')",
        (owner,),
    ).fetchall()
    for name, _ in rows:
        connection.execute(
            sql.SQL("ALTER TABLE public.{} OWNER TO {}").format(
                sql.Identifier(name), sql.Identifier(owner)
            )
        )
    if rows:
        log(f"{len(rows)} objects of an earlier stack now belong to {owner}")


def create_mlflow_users(environ: dict[str, str], values: dict[str, str]) -> None:
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(AUTH_DB)
    users = {
        "admin": (values["mlflow_admin_password"], True),
        "trainer": (values["mlflow_trainer_password"], False),
        "api": (values["mlflow_api_password"], False),
    }
    for username, (password, is_admin) in users.items():
        if not store.has_user(username):
            store.create_user(username, password, is_admin=is_admin)
        elif not store.authenticate_user(username, password):
            store.update_user(username, password=password)
        if store.get_user(username).is_admin != is_admin:
            store.update_user(username, is_admin=is_admin)
    # The trainer owns the registered model even when it exists from before the auth was on
    # (its creator would otherwise be the only one allowed to move the alias).
    model = environ.get("MLOPS_GATE__MODEL_NAME") or "flight-delay"
    store.grant_user_permission("trainer", "registered_model", model, "MANAGE")
    for path in Path("/mlartifacts").glob("basic_auth.db*"):
        os.chown(path, SERVICE_UID, SERVICE_UID)  # the MLflow server writes it as `mlops`
    log("MLflow users: admin, trainer (runs, versions, aliases), api (read only)")


def show(values: dict[str, str]) -> None:
    for secret in SECRETS:
        setting = f"  (.env: {secret.variable})" if secret.variable else ""
        print(f"  {secret.shown:<40} {values[secret.name]}{setting}")  # noqa: T201


def up() -> None:
    environ = dict(os.environ)
    values, previous, generated = resolve_secrets(environ)
    hand_out(values, environ)
    if generated:
        log("secrets generated on first start (shown this once; set any in .env to choose it):")
        show(values)
        log("read them again with: docker compose run --rm --no-deps init show")
    create_roles(environ, values, previous)
    create_mlflow_users(environ, values)
    log("done")


def main(argv: list[str]) -> None:
    command = argv[1] if len(argv) > 1 else "up"
    if command == "up":
        up()
    elif command in ("show", "get"):
        if not (ALL / SECRETS[0].name).exists():
            raise SystemExit("no secrets yet: `docker compose up` generates them")
        values = {s.name: (ALL / s.name).read_text().strip() for s in SECRETS}
        if command == "show":
            show(values)
        elif len(argv) == 3 and argv[2] in values:
            print(values[argv[2]])  # noqa: T201
        else:
            raise SystemExit(f"get one of: {', '.join(values)}")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
