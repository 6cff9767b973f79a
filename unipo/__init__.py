"""unipo: one library for policy optimization of language models (RLVR, preference and Nash methods).

`unipo.train(recipe, model=, dataset=, rewards=, **overrides) -> Run` is the Python API (unipo/api.py);
`unipo.algos` is the pure layer's public face. Importing unipo loads neither torch nor a model.
"""

from unipo.api import Run, train

__version__ = "0.1.0"
__all__ = ["Run", "__version__", "train"]
