"""attnlab: the Transformer family from shared layers, checked against reference implementations."""

__version__ = "0.1.0"
