"""unipo: one library for policy optimization of language models (RLVR, preference and Nash methods)."""

__version__ = "0.1.0"
