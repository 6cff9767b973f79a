"""Model loading (HF causal LMs, the default GGUF model), tiny test models, per-token log-probs."""
