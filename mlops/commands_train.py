"""`mlops train`: one tracked training run on the current feature table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from mlops.cli import app, console, fail
from mlops.flows import layout_of, progress_bar, require_features, tracking_of
from mlops.settings import Settings
from pipelines.errors import PipelineError

if TYPE_CHECKING:
    from training.fit import FitConfig
    from training.model import ModelConfig
    from training.train import TrainResult


def fit_config_of(settings: Settings, **overrides: object) -> FitConfig:
    from training.fit import FitConfig

    values = settings.fit.model_dump()
    return FitConfig(**(values | {k: v for k, v in overrides.items() if v is not None}))


def run_training(
    settings: Settings, model_config: ModelConfig, fit_config: FitConfig, show: bool = True
) -> TrainResult | None:
    """One tracked run with a progress bar; None on the helper ranks of a torchrun job."""
    from training.fit import EpochResult
    from training.train import train

    with progress_bar(console, disable=not show) as progress:
        bar = progress.add_task("training", total=fit_config.epochs)

        def advance(epoch: EpochResult) -> None:
            progress.update(
                bar,
                advance=1,
                description=f"training: valid loss {epoch.valid_loss:.4f}, "
                f"{epoch.samples_per_s:,.0f} samples/s",
            )

        return train(layout_of(settings), tracking_of(settings), model_config, fit_config, advance)


def print_metrics(result: TrainResult) -> None:
    for name, value in result.metrics.items():
        console.print(
            f"  {name}: {value:.4f}" if isinstance(value, float) else f"  {name}: {value}"
        )


@app.command("train")
def train_command(
    ctx: typer.Context,
    epochs: Annotated[int | None, typer.Option(min=1, help="at most this many epochs")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    learning_rate: Annotated[float | None, typer.Option(min=0.0)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Train the network on the feature table, tracked in MLflow.

    Data-parallel on N GPUs or processes: `torchrun --nproc_per_node N -m mlops train`.
    """
    from training.distributed import process_group
    from training.model import ModelConfig

    settings: Settings = ctx.obj
    try:
        require_features(layout_of(settings))
    except PipelineError as error:
        raise fail(error) from error
    fit_config = fit_config_of(
        settings, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed
    )
    model_config = ModelConfig(**settings.model.model_dump())
    with process_group() as rank:
        result = run_training(settings, model_config, fit_config, show=rank == 0)
    if result is None:  # a helper rank under torchrun: rank 0 reports
        return
    print_metrics(result)
    uri = tracking_of(settings).resolved_uri
    console.print(f"MLflow run {result.run_id} in {uri}")
    console.print(f"see it with: mlflow ui --backend-store-uri {uri}")
