"""Models: ReID-ready CLIP backbones, prompt learners, SSE, SIM and the SCI model."""
from .backbone import list_models

__all__ = ["list_models"]
