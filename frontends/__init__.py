"""Frontends: model formats -> tensor IR. Only this package imports onnx."""
