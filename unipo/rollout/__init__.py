"""Generation engines. `hf.sample` is the built-in one: HF model forward passes with a KV cache."""
