"""Self-supervised autoencoders for visual anomaly detection."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import anomaly_ae` stays light, and `from anomaly_ae import Detector` still works.
    if name == "Detector":
        from anomaly_ae.inference.detector import Detector

        return Detector
    raise AttributeError(f"module 'anomaly_ae' has no attribute {name!r}")


__all__ = ["Detector", "__version__"]
