"""ONNX Runtime target: generation over an exported artifact (CPU, or CUDA with IOBinding)."""

from .session import OrtSession

__all__ = ["OrtSession"]
