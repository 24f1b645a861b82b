"""Stage 2: export to ONNX with the shared-softmax custom ops, and the artifact folder."""

from .artifact import Artifact, load_artifact
from .exporter import export_model

__all__ = ["Artifact", "export_model", "load_artifact"]
