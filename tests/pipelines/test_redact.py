"""Passwords in URIs and connection strings are masked wherever a message may quote them."""

from __future__ import annotations

import pytest

from pipelines.redact import redact

PASSWORD = "s3cretpassw0rd"  # a test value, looked for in every output
TRACKING = f"http://reader:{PASSWORD}@127.0.0.1:1"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"postgresql+psycopg://optuna:{PASSWORD}@postgres:5432/optuna", "optuna:***@postgres"),
        (f"MLflow at {TRACKING} is unreachable", "reader:***@127.0.0.1:1 is unreachable"),
        (f"host=db password={PASSWORD} dbname=x", "password=*** dbname=x"),
        ("http://mlflow:5000", "http://mlflow:5000"),
        ("postgresql://mlops@db/x", "postgresql://mlops@db/x"),
    ],
)
def test_redact_masks_the_password_and_keeps_the_rest(text: str, shown: str) -> None:
    assert PASSWORD not in redact(text)
    assert shown in redact(text)
