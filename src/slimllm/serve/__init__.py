"""Serving pruned models in inference engines (vLLM)."""
