"""`mlops predict`: the graph: raw flights -> Dask partitions -> the served model -> Parquet.

Each partition is scored by `serving.batch.score_table`, the same validation, transform and
onnxruntime session as the API, in the Dask workers (one loaded model per worker process).
Scored and rejected rows go to a staging folder that replaces the output only when every
partition has succeeded.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.dataframe as dd
import pandas as pd

from mlops.configs import cluster_of
from mlops.flows.export import registered_bundle
from mlops.flows.progress import Progress
from mlops.settings import Settings
from pipelines.errors import SourceError
from pipelines.sources import source_files
from pipelines.storage import recover_target, staging_for, swap_in, write_parquet


@dataclass(frozen=True)
class PredictReport:
    output: Path
    scored: int
    rejected: int
    partitions: int


def _read(path: Path) -> dd.DataFrame:
    files = [str(f) for f in source_files(path)]
    if not files:
        raise SourceError(path, "no CSV or Parquet files here")
    if all(f.endswith(".csv") for f in files):
        return dd.read_csv(files, dtype=str, blocksize="16MB", keep_default_na=True)
    return dd.read_parquet(files)


@dask.delayed
def _score_partition(frame: pd.DataFrame, model_folder: str, index: int, staging: str) -> tuple:
    from serving.batch import model_in, score_table

    result = score_table(frame, model_in(model_folder))
    root = Path(staging)
    write_parquet(result.scored, root / f"part-{index:05d}.parquet")
    if len(result.rejected):
        (root / "rejected").mkdir(exist_ok=True)
        write_parquet(
            result.rejected.astype({"reason": str}), root / "rejected" / f"part-{index:05d}.parquet"
        )
    return len(result.scored), len(result.rejected)


def predict_table(source: Path, output: Path, model_folder: Path) -> PredictReport:
    """Score every row of `source` (needs a Dask client); the output appears whole or not."""
    frame = _read(source)
    recover_target(output)  # what a killed run left beside it
    staging = staging_for(output)
    staging.mkdir(parents=True)
    try:
        tasks = [
            _score_partition(part, str(model_folder.resolve()), i, str(staging))
            for i, part in enumerate(frame.to_delayed())
        ]
        counts = dask.compute(*tasks)
        swap_in(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PredictReport(
        output,
        sum(c[0] for c in counts),
        sum(c[1] for c in counts),
        len(tasks),
    )


def predict(
    settings: Settings,
    progress: Progress,
    source: Path,
    output: Path,
    model_dir: Path | None = None,
) -> PredictReport:
    """`source` scored by a local model folder, or by the champion, on Dask."""
    from pipelines.cluster import dask_client
    from serving.bundle import read_bundle, verify

    if model_dir is None:
        bundle = registered_bundle(settings)  # downloaded and verified
    else:
        bundle = read_bundle(model_dir)
        verify(bundle)
    with (
        dask_client(cluster_of(settings)),
        progress.stage(f"scoring with {bundle.name} v{bundle.version}"),
    ):
        return predict_table(source, output, bundle.folder)
