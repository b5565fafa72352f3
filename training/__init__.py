"""PyTorch training, tuning, evaluation, ONNX export and promotion (see issue: training)."""
