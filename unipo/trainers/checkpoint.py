"""Atomic, verified checkpoints: model (HF format), optimizer, scheduler, RNG states and data position.

A checkpoint is written into a temporary directory next to its final place and renamed when complete, with a
manifest of SHA-256 digests written last. Loading re-checks every digest, so a partial or corrupt checkpoint
is reported, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

_STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"
STATE = "trainer_state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing files or does not match its manifest."""


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state(), "sampler": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    generator.set_state(state["sampler"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainer_state(optimizer: dict, scheduler: Any, generator: torch.Generator, data: dict[str, int]) -> dict[str, Any]:
    """What a trainer saves besides the model: the optimizer's state dict (a sharded one's gathered by
    `World.optimizer_state`), the scheduler, every RNG state and the data position."""
    return {
        "optimizer": optimizer,
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(generator),
        "data": data,
    }


def restore(saved: dict[str, Any], optimizer: Any, scheduler: Any, generator: torch.Generator) -> tuple[int, dict]:
    """Load a `trainer_state` back (the optimizer's unless `optimizer` is None: a sharded one loads through
    `World.load_optimizer`); returns (step, data position)."""
    if optimizer is not None:
        optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"], generator)
    return saved["step"], saved["data"]


def latest(folder: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest checkpoint and its verified trainer state, or (None, None) for a fresh run."""
    found = list_checkpoints(folder)
    return (found[-1], load_state(found[-1])) if found else (None, None)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(
    folder: Path,
    step: int,
    model: Any,
    tokenizer: Any,
    trainer_state: dict[str, Any],
    keep: int = 2,
    extra_models: dict[str, Any] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    extra_weights: dict[str, dict[str, torch.Tensor] | None] | None = None,
) -> Path:
    """Write `folder/step-XXXXXX` atomically and prune all but the `keep` newest checkpoints. Each of `extra_models`
    (e.g. the value model as `critic`) is saved with its own `save_pretrained` and the tokenizer in a subdirectory.
    `weights`: the model's full state dict when `model` holds only a shard of it (`World.full_weights`);
    `extra_weights`: the same for each of `extra_models` that is sharded (e.g. a moving reference under FSDP2)."""
    final = folder / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:06d}-", dir=folder))
    try:
        model.save_pretrained(tmp, **({"state_dict": weights} if weights is not None else {}))
        tokenizer.save_pretrained(tmp)
        for name, extra in (extra_models or {}).items():
            full = (extra_weights or {}).get(name)
            extra.save_pretrained(tmp / name, **({"state_dict": full} if full is not None else {}))
            tokenizer.save_pretrained(tmp / name)
        torch.save({"step": step, **trainer_state}, tmp / STATE)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {"step": step, "files": {str(p.relative_to(tmp)): _sha256(p) for p in files}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if final.exists():  # the same step saved again (e.g. a resumed run re-saving): replace it whole
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Completed checkpoint directories, oldest first (temporary ones are ignored)."""
    if not folder.exists():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def verify(path: Path) -> dict[str, Any]:
    """Check a checkpoint against its manifest; raises CheckpointError naming what is wrong."""
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise CheckpointError(f"checkpoint {path} is incomplete: no {MANIFEST} (interrupted while saving?)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path} has an unreadable {MANIFEST}: {e}") from None
    for name, digest in manifest["files"].items():
        file = path / name
        if not file.exists():
            raise CheckpointError(f"checkpoint {path} is missing {name}")
        if _sha256(file) != digest:
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} does not match its SHA-256 in {MANIFEST}")
    return manifest


def load_state(path: Path) -> dict[str, Any]:
    """The verified trainer state of a checkpoint (optimizer, scheduler, RNG, data position, step)."""
    verify(path)
    return torch.load(path / STATE, weights_only=False)
