"""ragtune: teach a causal language model RAG-style thinking."""

__version__ = "0.1.0"
