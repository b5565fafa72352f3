"""The `mlops` CLI, settings and the end-to-end flows that wire the packages together."""
