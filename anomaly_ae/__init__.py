"""Self-supervised autoencoders for visual anomaly detection."""

__version__ = "0.1.0"
