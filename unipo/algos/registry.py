"""Component registries: one namespace per kind, filled by decorators at import time.

Every registered component records the paper it comes from and a provenance tag (ALGORITHMS.md §0.1), so
`unipo list` can show the catalogue and a reconstruction is never passed off as a paper's rule.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass

KINDS = (
    "advantage",
    "policy_loss",
    "aggregation",
    "token_weight",
    "kl",
    "regularizer",
    "sampler",
    "critic",
    "preference",
    "online",
    "credit",
    "classic",
)


_WARNED: set[str] = set()


def warn_reconstruction(name: str, paper: str) -> None:
    """Log once per process that component `name` is a reconstruction, not the published rule (ALGORITHMS.md R2)."""
    if name in _WARNED:
        return
    _WARNED.add(name)
    logging.getLogger("unipo.algos").warning(
        "%r is a reconstruction of %s, not the published rule (ALGORITHMS.md R2)", name, paper
    )


class _Required:
    """Marks a hyperparameter with no default: a recipe must set it."""

    def __repr__(self) -> str:
        return "<required>"


REQUIRED = _Required()

DATA_ARGS = frozenset({"mask", "num_tokens", "num_seqs", "progress", "generator"})
"""Keyword arguments that carry data from the trainer, never hyperparameters from a recipe."""


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    fn: Callable
    paper: str
    """Citation: title, authors/year and arXiv id where known."""
    tag: str
    """Provenance tag of ALGORITHMS.md §0.1, e.g. "checked: TRL, verl", "memory", "reconstructed"."""

    @property
    def params(self) -> dict[str, object]:
        """Hyperparameters with their defaults (`REQUIRED` where there is none): keyword-only arguments that are not
        data (tensors, global counts)."""
        sig = inspect.signature(self.fn)
        return {
            p.name: REQUIRED if p.default is inspect.Parameter.empty else p.default
            for p in sig.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
            and p.name not in DATA_ARGS
            and "Tensor" not in str(p.annotation)
        }


_REGISTRY: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}


def register(kind: str, name: str, *, paper: str, tag: str) -> Callable[[Callable], Callable]:
    """Decorator that registers `fn` as component `name` of `kind`. Registering a name twice is an error."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown component kind {kind!r}; kinds are: {', '.join(KINDS)}")

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY[kind]:
            raise ValueError(f"{kind} {name!r} is already registered (by {_REGISTRY[kind][name].fn.__module__})")
        _REGISTRY[kind][name] = Entry(kind, name, fn, paper, tag)
        return fn

    return deco


def entry(kind: str, name: str) -> Entry:
    """The registry entry for `name` of `kind`; raises KeyError naming the known ids."""
    _load_all()
    if kind not in _REGISTRY:
        raise KeyError(f"unknown component kind {kind!r}; kinds are: {', '.join(KINDS)}")
    if name not in _REGISTRY[kind]:
        known = ", ".join(sorted(_REGISTRY[kind])) or "(none)"
        raise KeyError(f"unknown {kind} {name!r}; registered: {known}")
    return _REGISTRY[kind][name]


def get(kind: str, name: str) -> Callable:
    """The function registered as `name` of `kind`."""
    return entry(kind, name).fn


def names(kind: str) -> list[str]:
    """Sorted ids registered under `kind`."""
    _load_all()
    if kind not in _REGISTRY:
        raise KeyError(f"unknown component kind {kind!r}; kinds are: {', '.join(KINDS)}")
    return sorted(_REGISTRY[kind])


def entries() -> list[Entry]:
    """Every registered component, by kind then name."""
    _load_all()
    return [_REGISTRY[k][n] for k in KINDS for n in sorted(_REGISTRY[k])]


def _load_all() -> None:
    # The family modules register themselves on import; importing the package imports them all.
    import unipo.algos  # noqa: F401
