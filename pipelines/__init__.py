"""Data pipeline: sources, validation, bronze storage, point-in-time features, the contract.

Imports nothing else of ours. `pipelines.transform`, `pipelines.lookups` and `pipelines.spec` are
the pure numpy/pandas feature contract that serving shares; everything Dask lives in
`pipelines.features`.
"""
