"""A stand-in for the `vllm` package on CPU, where vLLM cannot run: the shapes of its offline API in 0.10-0.12
(`LLM`, `SamplingParams`, `RequestOutput.outputs[i]` with `token_ids` through EOS, `logprobs` as one
{token id: `Logprob`} per token, `finish_reason` "stop"/"length"; `sleep`, `wake_up`, `apply_model`,
`reset_prefix_cache`), sampling with a Hugging Face model loaded from the path it is given (`hf.sample_tokens`, one
generator per request seeded by its `seed`). It records the calls made to it, refuses to sample while asleep, and
a level-2 sleep discards its weights (NaN) as vLLM's does. Its models' `load_weights` takes checkpoint names only, as a
vLLM model's does (a tied LM head comes with its embedding), so a trainer-side name fails.

Install it with `install(monkeypatch)`; `LLM.instances` holds the engines made since.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from unipo.rollout.hf import sample_tokens


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 16
    logprobs: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.top_k < -1 or self.n != 1 or self.logprobs != 0:  # the last two: what the engine must ask for
            raise ValueError(f"unexpected sampling parameters {self}")


@dataclass
class Logprob:
    logprob: float


@dataclass
class CompletionOutput:
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]]
    finish_reason: str


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


class _VLLMModel:
    """What `apply_model` hands its function: a model whose `load_weights` takes (checkpoint name, tensor) pairs."""

    def __init__(self, hf: Any):
        self.hf = hf

    def load_weights(self, weights: Any) -> set[str]:
        params, loaded = dict(self.hf.named_parameters()), set()
        for name, w in weights:
            params[name].data.copy_(w)  # KeyError: not a checkpoint name
            loaded.add(name)
        return loaded


class LLM:
    instances: list[LLM] = []

    def __init__(self, model: str, **kwargs: Any):
        self.kwargs = kwargs
        self.hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs.get("tokenizer", model))
        self.calls: list[str] = []
        self.awake = {"weights", "kv_cache"}
        LLM.instances.append(self)

    def generate(self, prompts: list[dict], sampling_params: list[SamplingParams], use_tqdm: bool = True) -> list:
        assert self.awake == {"weights", "kv_cache"}, f"generate while {self.awake} awake"
        self.calls.append("generate")
        outputs = []
        for prompt, p in zip(prompts, sampling_params, strict=True):
            ids = torch.tensor([prompt["prompt_token_ids"]])
            out = sample_tokens(self.hf, self.tokenizer, ids, torch.ones_like(ids), [{}], n=1,
                                max_new_tokens=p.max_tokens, temperature=p.temperature, top_k=max(p.top_k, 0),
                                top_p=p.top_p, generator=[torch.Generator().manual_seed(p.seed)])  # fmt: skip
            n = int(out.completion_mask.sum())
            tokens, logps = out.completion_ids[0, :n].tolist(), out.rollout_logp[0, :n].tolist()
            finish = "length" if bool(out.truncated[0]) else "stop"
            done = CompletionOutput(tokens, [{t: Logprob(lp)} for t, lp in zip(tokens, logps, strict=True)], finish)
            outputs.append(RequestOutput(prompt["prompt_token_ids"], [done]))
        return outputs

    def sleep(self, level: int = 1) -> None:
        self.calls.append(f"sleep{level}")
        self.awake = set()
        if level == 2:
            for p in self.hf.parameters():
                p.fill_(float("nan"))

    def wake_up(self, tags: list[str] | None = None) -> None:
        tags = tags or ["weights", "kv_cache"]
        self.calls.append("wake " + " ".join(tags))
        self.awake |= set(tags)

    def apply_model(self, func: Any) -> list:
        assert "weights" in self.awake, "weights loaded while asleep"
        self.calls.append("apply_model")
        return [func(_VLLMModel(self.hf))]

    def reset_prefix_cache(self) -> bool:
        self.calls.append("reset_prefix_cache")
        return True


def install(monkeypatch: Any) -> types.ModuleType:
    """Make `import vllm` give this stand-in for the test (and forget the engines made before)."""
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = LLM, SamplingParams
    LLM.instances = []
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module
