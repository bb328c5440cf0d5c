"""LRP relevance of anomaly scores with zennit composites, and its evaluation against masks."""

from anomaly_ae.optional import require

require("zennit", "explain")  # before the modules that import it, so a missing install is one clear line

from anomaly_ae.explain.relevance import Explanation, Method, box_mask, explain  # noqa: E402
from anomaly_ae.explain.rules import UnsupportedLayerError, build_composite, check_supported  # noqa: E402

__all__ = [
    "Explanation",
    "Method",
    "UnsupportedLayerError",
    "box_mask",
    "build_composite",
    "check_supported",
    "explain",
]
