"""The Dask graph: same table in-process, on 2 worker processes, and as the pandas reference."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.cluster import ClusterConfig, dask_client
from pipelines.features import build_feature_tables, build_features_pandas
from pipelines.layout import SPLITS, DataLayout
from pipelines.lookups import load_lookups
from pipelines.spec import FeatureSpec, encode, sha256_of
from pipelines.splits import SplitPlan
from pipelines.storage import read_parquet_folder
from pipelines.transform import CATEGORICAL, NUMERICAL, build_features


def _copy_home(source: Path, target: Path) -> DataLayout:
    shutil.copytree(source / "data" / "bronze", target / "data" / "bronze")
    return DataLayout(target)


def _tables(layout: DataLayout) -> dict[str, pd.DataFrame]:
    return {split: read_parquet_folder(layout.split(split)) for split in SPLITS}


@pytest.fixture(scope="module")
def built(ingested_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, DataLayout]:
    """The features built three ways from the same bronze data."""
    layouts = {}
    configs = {
        "in_process": ClusterConfig(n_workers=1, processes=False),
        "two_processes": ClusterConfig(n_workers=2, processes=True),
    }
    for name, config in configs.items():
        layout = _copy_home(ingested_home, tmp_path_factory.mktemp(name))
        with dask_client(config) as client:
            build_feature_tables(layout, SplitPlan(), client)
        layouts[name] = layout
    layouts["pandas"] = _copy_home(ingested_home, tmp_path_factory.mktemp("pandas"))
    build_features_pandas(layouts["pandas"], SplitPlan())
    return layouts


def test_two_worker_processes_give_the_same_table_as_the_default_run(built) -> None:
    reference = _tables(built["in_process"])
    assert sum(len(t) for t in reference.values()) > 300_000
    for other in ("two_processes", "pandas"):
        for split, table in _tables(built[other]).items():
            pd.testing.assert_frame_equal(table, reference[split], check_exact=True)


@pytest.mark.parametrize(
    ("target_rows", "partitions"),
    [  # 8-day and 3-day partitions (the default: 12, one a month)
        (7_400, 48),
        pytest.param(2_000, 127, marks=pytest.mark.slow),
    ],
)
def test_partitions_of_any_length_give_the_same_table(
    ingested_home: Path, tmp_path: Path, built, target_rows: int, partitions: int
) -> None:
    """Partitions shorter than the look-back: each reads events from several neighbours. The
    reference is the monthly build, itself equal to the single-process pandas build above."""
    layout = _copy_home(ingested_home, tmp_path)
    with dask_client(ClusterConfig(n_workers=2)) as client:
        report = build_feature_tables(layout, SplitPlan(), client, target_rows=target_rows)
    assert report.partitions == partitions
    reference = _tables(built["in_process"])
    for split, table in _tables(layout).items():
        pd.testing.assert_frame_equal(table, reference[split], check_exact=True)


def test_the_spec_and_lookups_are_the_same_however_they_were_built(built) -> None:
    specs = {name: FeatureSpec.load(layout.spec) for name, layout in built.items()}
    dumps = [s.model_dump(exclude={"created_at"}) for s in specs.values()]
    assert all(d == dumps[0] for d in dumps)


def test_splits_follow_the_calendar(built) -> None:
    layout = built["two_processes"]
    spec = FeatureSpec.load(layout.spec)
    assert spec.splits["train"].months == [f"2013-{m:02d}" for m in range(1, 10)]
    assert spec.splits["valid"].months == ["2013-10"]
    assert spec.splits["test"].months == ["2013-11", "2013-12"]
    for split, table in _tables(layout).items():
        months = table["scheduled_departure"].dt.strftime("%Y-%m").unique()
        assert set(months) == set(spec.splits[split].months)
        assert len(table) == spec.splits[split].rows
        assert table["delayed"].mean() == pytest.approx(spec.splits[split].positive_rate)
    labelled = sum(s.rows for s in spec.splits.values())
    unlabelled = sum(s.unlabelled for s in spec.splits.values())
    assert labelled + unlabelled == 336_776


def test_statistics_come_from_the_training_months_only(built) -> None:
    layout = built["two_processes"]
    spec = FeatureSpec.load(layout.spec)
    train = _tables(layout)["train"]
    temp = next(f for f in spec.numerical if f.name == "temp")
    assert temp.mean == pytest.approx(train["temp"].mean())
    assert temp.default == pytest.approx(train["temp"].median())
    assert temp.missing_rate == pytest.approx(train["temp"].isna().mean())
    dest = next(f for f in spec.categorical if f.name == "dest")
    counts = train["dest"].value_counts()
    assert dest.vocabulary == sorted(counts[counts >= 10].index)
    assert [f.name for f in spec.categorical] == CATEGORICAL
    assert [f.name for f in spec.numerical] == NUMERICAL
    assert all(abs(sum(f.psi_fractions) - 1) < 1e-9 for f in spec.numerical)


def test_lookups_are_recorded_with_their_sha256_and_rebuild_the_features(built) -> None:
    layout = built["two_processes"]
    spec = FeatureSpec.load(layout.spec)
    assert {"weather.npz", "planes.npz", "airports.npz"} <= set(spec.lookups)
    for entry in spec.lookups.values():
        assert sha256_of(layout.build / entry.path) == entry.sha256
    lookups = load_lookups(layout.lookups)
    test = _tables(layout)["test"]
    rows = test.sample(2_000, random_state=0).reset_index(drop=True)
    online = build_features(
        rows[["carrier", "flight", "tailnum", "origin", "dest"]].assign(
            scheduled_departure=rows["scheduled_departure"], distance=rows["distance"]
        ),
        lookups,
    )
    pd.testing.assert_frame_equal(online, rows[online.columns], check_exact=True)


def test_encode_uses_the_oov_bucket_and_the_training_defaults(built) -> None:
    spec = FeatureSpec.load(built["two_processes"].spec)
    rows = _tables(built["two_processes"])["test"].head(3).copy()
    rows.loc[0, "carrier"] = "NEWCO"
    rows.loc[1, "temp"] = np.nan
    encoded = encode(rows, spec)
    carrier = [f.name for f in spec.categorical].index("carrier")
    temp = [f.name for f in spec.numerical].index("temp")
    assert encoded.categorical[0, carrier] == 0
    assert encoded.categorical[1, carrier] > 0
    assert encoded.numerical[1, temp] == np.float32(spec.numerical[temp].default)
    assert encoded.defaults_used[1, temp] and not encoded.defaults_used[0, temp]
    assert encoded.numerical.dtype == np.float32 and not np.isnan(encoded.numerical).any()


# The content of the feature build on the bundled data, pinned: a change to the data pipeline
# that alters one value of the table, the spec (its statistics, vocabularies and the sha256 of
# every lookup file) or the splits fails here. When a change is meant to alter the features,
# say so in its commit and pin the new digests (`build_digest(DataLayout(home))`).
BUNDLED_BUILD = {
    "spec": "ef6796caca5f7c12e97914e1950c65cdd2c2865c4135fc02222895316bec71cf",
    "train": "624582201122b299c7cf7bd71d5e8ea4ec5ae2b7542347a34cea22a12ac5226a",
    "valid": "8d09c35957ad1babf39c0a418489b92ffa3f0198990a0e087e433c4d4ab8dfcc",
    "test": "0b872f9a38db2dce58dd6186ea9febbb3097f16dd8c331e046ecf4e8e05ba3ef",
}


def build_digest(layout: DataLayout) -> dict[str, str]:
    """sha256 of the spec (less its creation time) and of each split's columns, types and
    values: the content, not the Parquet bytes, which carry the writer's version."""
    spec = json.loads(layout.spec.read_text())
    spec.pop("created_at")
    digests = {"spec": hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()}
    for split, table in _tables(layout).items():
        digest = hashlib.sha256(repr([(c, str(t)) for c, t in table.dtypes.items()]).encode())
        digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
        digests[split] = digest.hexdigest()
    return digests


def test_the_bundled_build_is_the_pinned_one(featured_home: Path) -> None:
    assert build_digest(DataLayout(featured_home)) == BUNDLED_BUILD
