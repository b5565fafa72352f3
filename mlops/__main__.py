"""`python -m mlops`, which is also how torchrun starts it: `torchrun ... -m mlops train`."""

from mlops.cli import app

app(prog_name="mlops")
