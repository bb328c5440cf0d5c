"""LRP relevance of anomaly scores with zennit composites, its CLI, and its evaluation against masks."""

from anomaly_ae.explain.relevance import AnomalyScore, Explanation, Method, box_mask, explain
from anomaly_ae.explain.rules import UnsupportedLayerError, build_composite, check_supported

__all__ = [
    "AnomalyScore",
    "Explanation",
    "Method",
    "UnsupportedLayerError",
    "box_mask",
    "build_composite",
    "check_supported",
    "explain",
]
