"""Serving: an HTTP server with OpenAI-shaped endpoints in front of a checkpoint.

engine.py  continuous batching of generation requests (rows join and leave between steps)
metrics.py Prometheus text-format counters, gauges and histograms
app.py     the FastAPI application: /v1/completions, /v1/embeddings, /v1/classify, /health, /metrics
"""

from .engine import Engine, EngineConfig, QueueFull

__all__ = ["Engine", "EngineConfig", "QueueFull"]
