"""Generation engines (`rollout.engine`): what samples the RL trainer's completions.

An engine takes the batch's prompts and sampling settings and returns the completions as token ids with the
engine's own log-probs of the tokens it drew (the behaviour log-probs, `Rollouts.rollout_logp`, which off-policy
corrections such as `rollout_is` and `opsm` read), and loads new weights between batches, never during one:

- `generate(rows, n=, max_new_tokens=, temperature=, top_k=, top_p=, generator=, forced=)`: the keywords of
  `hf.sample`; `generator` is the run's generator or one per completion (the draws of a completion then depend only on
  its own, so any number of ranks samples the same completions).
- `weights(model)`: what the engine loads, taken from the trainer's model (a collective when it is sharded: every
  rank calls it); `load_weights(weights)`: load them (the caller counts the policy versions).
- `close()`: release what the engine holds (its actors, its GPU memory) when the run ends.
- `logprobs`: the distribution the log-probs are of. "tempered": softmax(z / T) before top-k/top-p filtering, the
  distribution the loss scores (`HFEngine`); "sampled": the one the tokens were drawn from, after filtering and
  renormalised (vLLM's `processed_logprobs`). The two agree when `rollout.top_k=0` and `rollout.top_p=1`
  (`../shared/notes/scale.md` §4; vLLM's default `raw_logprobs`, taken before temperature, agrees with neither:
  trl#4159).

`HFEngine` is the default: `hf.sample` on the trainer's own model (a synchronous run: nothing to load) or on a copy
(the producer of asynchronous rollouts, trainers/pipeline.py). `VLLMEngine` (rollout/vllm.py) runs vLLM in the
trainer's process, asleep while the trainer updates.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import torch

from unipo.models.loading import autocast_context
from unipo.rollout.batch import Rollouts, right_pad
from unipo.rollout.hf import sample, sample_tokens

Weights = Iterable[tuple[str, torch.Tensor]]
"""(name, tensor) pairs: a list, or a stream that gathers each tensor when it is read (vLLM's)."""


class Engine(Protocol):
    """A generation engine (module docstring)."""

    logprobs: str

    def generate(self, rows: list[dict[str, Any]], **sampling: Any) -> Rollouts: ...

    def weights(self, model: Any) -> Weights: ...

    def load_weights(self, weights: Weights) -> None: ...

    def close(self) -> None: ...


class HFEngine:
    """`hf.sample` on `model`: the trainer's own (nothing to load) or a frozen copy (`copy_of`), which loads the
    trainer's trainable parameters by name (a LoRA run's adapters only)."""

    logprobs = "tempered"

    def __init__(self, model: Any, tokenizer: Any, autocast: str = "off"):
        """`autocast`: `model.autocast`, for an engine that samples outside the trainer's autocast context (in a Ray
        actor, in a server), so that it samples as the trainer's process does."""
        self.model, self.tokenizer, self.autocast = model, tokenizer, autocast

    @classmethod
    def copy_of(cls, model: Any, tokenizer: Any) -> HFEngine:
        """An engine on a frozen copy of `model`, made before the trainer's is sharded (`dist.strategy=fsdp2`): whole
        on every rank, so sampling makes no collective."""
        return cls(copy.deepcopy(model).eval().requires_grad_(False), tokenizer)

    def generate(self, rows: list[dict[str, Any]], **sampling: Any) -> Rollouts:
        with autocast_context(self.model, self.autocast):
            return sample(self.model, self.tokenizer, rows, **sampling)

    def generate_tokens(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, rows: list[dict[str, Any]],
                        **sampling: Any) -> Rollouts:  # fmt: skip
        """`generate` on prompts given as left-padded token ids and their mask (a generation server's requests)."""
        device = next(self.model.parameters()).device
        with autocast_context(self.model, self.autocast):
            return sample_tokens(self.model, self.tokenizer, prompt_ids.to(device), prompt_mask.to(device), rows,
                                 **sampling)  # fmt: skip

    @staticmethod
    def weights(model: Any) -> Weights:
        with torch.no_grad():
            return [(name, whole(p)) for name, p in model.named_parameters() if p.requires_grad]

    def load_weights(self, weights: Weights) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, w in weights:
                params[name].copy_(w)

    def close(self) -> None:
        """Nothing to release (the model is the trainer's or a copy the garbage collector frees)."""


def whole(p: torch.Tensor) -> torch.Tensor:
    """A copy of parameter `p`, gathered from every rank's shard when it is sharded (a DTensor: a collective)."""
    from torch.distributed.tensor import DTensor

    return p.full_tensor() if isinstance(p, DTensor) else p.detach().clone()


_WRAPPERS = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")
"""Name parts that wrappers add to a module's parameters (torch.compile, activation checkpointing, FSDP1)."""


def checkpoint_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """`model`'s weights whole, under the names of its Hugging Face checkpoint (what vLLM's `load_weights` maps onto its
    own layers): wrapper name parts dropped and a LoRA run's adapters merged into their base weights,
    W + (α / r)·B·A for each active adapter (PEFT's `merge_and_unload`, computed on gathered copies so the trainer's
    weights are untouched; verl's `_merged_lora_per_tensor_param` does the same). A tied LM head comes once, under
    its embedding's name. A sharded model's parameters are gathered one at a time (a collective: every rank calls it,
    in the same order)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: the base model's names
    lora = {id(m): m for m in inner.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}
    done: set[int] = set()
    with torch.no_grad():
        for name, module in inner.named_modules():
            if id(module) in lora:
                yield _clean(f"{name}.weight"), _merged(module)
                for pname, p in module.base_layer.named_parameters():  # a bias
                    if pname != "weight":
                        yield _clean(f"{name}.{pname}"), whole(p)
                done.update(id(p) for p in module.parameters())
                continue
            for pname, p in module.named_parameters(recurse=False):
                if id(p) not in done:
                    done.add(id(p))
                    yield _clean(f"{name}.{pname}" if name else pname), whole(p)


def _clean(name: str) -> str:
    for part in _WRAPPERS:
        name = name.replace(part, "")
    return name.replace(".base_layer.", ".")


def _merged(module: Any) -> torch.Tensor:
    """A LoRA layer's base weight with its active adapters added (gathered copies)."""
    weight = whole(module.base_layer.weight)
    if getattr(module, "merged", False):  # already merged into the base (PEFT's `merge_adapter`)
        return weight
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        delta = whole(module.lora_B[name].weight) @ whole(module.lora_A[name].weight) * module.scaling[name]
        weight += (delta.T if getattr(module, "fan_in_fan_out", False) else delta).to(weight.dtype)
    return weight


def from_token_lists(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    rows: list[dict[str, Any]],
    counts: list[int],
    tokens: list[list[int]],
    logps: list[list[float]],
    truncated: list[bool],
    tokenizer: Any,
) -> Rollouts:
    """The batch of an engine that returns lists: `counts[i]` completions of prompt i (prompt-major), each its token
    ids through its EOS (or cut at the length limit: `truncated`) with the engine's log-probs of them."""
    device = prompt_ids.device
    ids, mask = right_pad(tokens, tokenizer.pad_token_id, device)
    logp, _ = right_pad(logps, 0.0, device)
    texts = tokenizer.batch_decode([list(t) for t in tokens], skip_special_tokens=True)
    group_ids = torch.arange(len(counts), device=device).repeat_interleave(torch.tensor(counts, device=device))
    return Rollouts(prompt_ids, prompt_mask, ids.long(), mask.long(), group_ids, torch.tensor(truncated, device=device),
                    logp.float(), list(rows), texts)  # fmt: skip
