"""Stage 3: validation of an artifact's runtime against the PyTorch reference or golden outputs."""

from .run import validate_artifact

__all__ = ["validate_artifact"]
