"""The flows: stages wired end to end (data, training, the gate, `run`, `retrain`, `predict`).

Each takes settings and a `Progress`, returns a typed result and prints nothing; the commands
in `mlops.commands` render the results. Designed failures raise `pipelines.errors.MlopsError`.
"""
