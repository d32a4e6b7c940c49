"""Evaluation: exact ranking metrics, chunked feature evaluation, re-ranking, protocol tables."""
from .metrics import evaluate, evaluate_features, summary

__all__ = ["evaluate", "evaluate_features", "summary"]
