"""The Dask stage leaves the process it ran in as it found it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")

PROBE = """
import json, os, sys
if __name__ == "__main__":
    if sys.argv[1] == "dask":
        from pipelines.cluster import ClusterConfig, dask_client
        with dask_client(ClusterConfig(n_workers=1, processes=True)) as client:
            assert client.submit(sum, [1, 2]).result() == 3
    import torch  # after the stage, as `mlops run` trains after its features
    seen = {key: os.environ.get(key) for key in sys.argv[2:]}
    print(json.dumps({"threads": torch.get_num_threads(), "environ": seen}))
"""


def _probe(tmp_path, stage: str) -> dict:
    script = tmp_path / "probe.py"  # a file: the workers are spawned and re-import __main__
    script.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in THREADS}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, str(script), stage, *THREADS],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to see a thread pool shrink")
def test_after_a_local_cluster_torch_still_uses_every_core(tmp_path) -> None:
    """Dask's nannies set OMP_NUM_THREADS=1 (and more) in their own process before spawning
    workers; left there, torch sized its pool from it and `mlops run` trained on one thread."""
    without = _probe(tmp_path, "none")
    after = _probe(tmp_path, "dask")
    assert after["environ"] == dict.fromkeys(THREADS)
    assert after["threads"] == without["threads"] > 1
