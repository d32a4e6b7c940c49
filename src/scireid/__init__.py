"""scireid: SCI and CLIP-ReID for cloth-changing person re-identification.

Nothing heavy (torch, open_clip) is imported here; ``scireid.load`` imports lazily.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load", "build_dataset", "evaluate", "Index", "embed", "__version__"]


def __getattr__(name: str):
    if name == "load":
        from .inference import load
        return load
    if name == "build_dataset":
        from .data.datasets import build_dataset
        return build_dataset
    if name == "evaluate":
        from .eval.metrics import evaluate
        return evaluate
    if name == "Index":
        from .deploy.index import Index
        return Index
    if name == "embed":
        from .deploy.embed import embed
        return embed
    raise AttributeError(name)
