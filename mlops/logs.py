"""Logging for every entry point: the CLI, `mlops serve`'s workers, the serving image's factory.

Batch commands keep the terminal for progress bars and results: everything logged (libraries
included, and Python warnings) goes to a file under MLOPS_HOME/logs/, shown live with `-v`.
Services (`serve`, `schedule`) log to stderr, as text or as one JSON object per line
(`MLOPS_LOG_FORMAT=json`) for containers; uvicorn's loggers get the same handler.
"""

from __future__ import annotations

import logging
import logging.config
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console

from pipelines.redact import redact

if TYPE_CHECKING:
    from mlops.settings import Settings

LogFormat = Literal["text", "json"]
TEXT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# Libraries that narrate at INFO what our own logs already say (or nothing a user needs).
CHATTY = ("onnxscript", "onnx_ir", "torch.onnx", "alembic", "urllib3", "httpx", "matplotlib")


def _formatter(fmt: LogFormat) -> dict[str, Any]:
    if fmt == "json":
        return {
            "()": "pythonjsonlogger.json.JsonFormatter",
            # the pid: each worker of `mlops serve --workers N` logs its own loads and refusals
            "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            "rename_fields": {
                "levelname": "level",
                "name": "logger",
                "asctime": "time",
                "process": "pid",
            },
        }
    return {"format": TEXT}


class RedactPasswords(logging.Filter):
    """Every record, libraries' included, leaves with its passwords masked: a storage or
    tracking URL quoted by an error would otherwise reach the log file, stderr and CI logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def route_library_output(home: Path) -> None:
    """Libraries that write to the terminal or the user's home do it through ours instead
    (edge only: these are the libraries' own switches, read when they are first imported)."""
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # its own stderr handler
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # tqdm bars
    # matplotlib's font cache and onnxruntime's device id: under MLOPS_HOME, not ~/.cache
    os.environ.setdefault("XDG_CACHE_HOME", str((home / "cache").resolve()))
    # torch's compile cache (the ONNX exporter's torch.export touches it): not the shared /tmp
    os.environ.setdefault(
        "TORCHINDUCTOR_CACHE_DIR", str((home / "cache" / "torchinductor").resolve())
    )
    # onnxruntime's telemetry (1.32 keeps a device id and an event database): off unless the
    # user turns it on
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    # TensorFlow's C++ INFO lines (CPU features, graph sessions) on stderr; warnings stay
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def adopt(*names: str) -> None:
    """Loggers that a library wired to stderr itself when imported (torch does; MLflow does
    unless MLFLOW_CONFIGURE_LOGGING=false came first) log through ours instead."""
    for name in names:
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True


def service_config(fmt: LogFormat = "text", level: str = "INFO") -> dict[str, Any]:
    """A dictConfig for a service: the root and uvicorn's loggers to stderr, one format."""
    uvicorn = {name: {"level": level} for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": _formatter(fmt)},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
                "filters": ["redact"],
            }
        },
        "filters": {"redact": {"()": RedactPasswords}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            **uvicorn,
            **{name: {"level": "WARNING"} for name in CHATTY},
        },
    }


def configure_service(home: Path, fmt: LogFormat = "text", level: str = "INFO") -> None:
    route_library_output(home)
    logging.config.dictConfig(service_config(fmt, level))
    adopt("mlflow")  # in case it was imported (and wired itself) before this
    logging.captureWarnings(True)


def service_logging(settings: Settings) -> None:
    """A service's logging (`mlops serve`, `mlops schedule`, the serving image's factory), set
    when the service starts, not by the CLI's callback: `--help` leaves the process's logging
    as it found it (dictConfig closes every handler it finds, a library's included)."""
    configure_service(settings.home, settings.log_format, settings.log_level)


class LazyFileHandler(logging.FileHandler):
    """Creates its file (and folder) at the first record: `--help` writes nothing."""

    def _open(self):  # logging's own signature
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def configure_batch(home: Path, command: str, console: Console, verbose: bool) -> Path:
    """Everything to a new file under home/logs (returned); to the terminal only if verbose."""
    from rich.logging import RichHandler

    route_library_output(home)
    path = home.resolve() / "logs" / f"{datetime.now():%Y%m%d-%H%M%S}-{command}.log"
    to_file = LazyFileHandler(path, encoding="utf-8", delay=True)
    to_file.setFormatter(logging.Formatter(TEXT))
    handlers: list[logging.Handler] = [to_file]
    if verbose:
        handlers.append(RichHandler(console=console, show_path=False))
    for handler in handlers:
        handler.addFilter(RedactPasswords())
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    adopt("mlflow")  # in case it was imported (and wired itself) before this
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    return path
