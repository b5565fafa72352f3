"""FastAPI + onnxruntime serving of the champion model (see issue: serving).

Imports only the feature contract of `pipelines`: never torch, Dask or `training`.
"""
