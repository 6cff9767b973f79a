"""vLLM as the generation engine (`rollout.engine=vllm`; https://docs.vllm.ai, offline `LLM` API).

vLLM runs in the trainer's process, on the trainer's GPU (one engine per rank under torchrun, as TRL's colocate mode:
vllm#11400), and samples the prompts as token ids (never re-tokenised text: trl#5238), one request per completion
with its own seed drawn from the completion's generator, so a completion does not depend on the rank or batch that
samples it. Its log-probs are `processed_logprobs` (vLLM >= 0.10.2): those of the distribution each token was drawn
from, after temperature and top-k/top-p and renormalised (rollout/engine.py); they are the behaviour log-probs that
`rollout_is`, `opsm` and the other corrections compare the trainer's with.

Between batches the engine loads the trainer's weights under their checkpoint names with LoRA merged
(`engine.checkpoint_weights`, gathered one tensor at a time from a sharded model) and resets its prefix cache, so no
KV computed with the old weights is reused (vllm#9744). A synchronous run's engine sleeps while the trainer updates:
it frees its KV cache and moves its weights to CPU memory (`rollout.vllm.sleep_level=1`) or discards them (2); the
weights wake before the new ones load, the KV cache only when it samples again (vllm#15254). After a level-2 sleep the
engine refuses to sample until weights are loaded (gibberish otherwise: vllm#29341). The producer of asynchronous
rollouts samples while the trainer updates and never sleeps.

Written against vLLM 0.10-0.12's API. It needs a GPU, which CI never has: tests/unit/test_engines.py drives it through a
stand-in with the API's shapes on CPU, tests/gpu/test_vllm.py and `scripts/gpu_check.sh` run the real engine.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import torch

from unipo.config import Config, ConfigError
from unipo.models.loading import resolve_model_path
from unipo.rollout.batch import Rollouts, tokenize_prompts
from unipo.rollout.engine import Weights, checkpoint_weights, from_token_lists


def import_vllm() -> Any:
    """The `vllm` module, or a one-line error saying how to get it."""
    try:
        return importlib.import_module("vllm")
    except ImportError:
        raise ConfigError("rollout.engine=vllm needs vLLM on a GPU machine: pip install 'unipo[vllm]'") from None


class VLLMEngine:
    """A vLLM `LLM` sampling for the trainer (module docstring)."""

    logprobs = "sampled"

    def __init__(self, llm: Any, vllm: Any, tokenizer: Any, device: torch.device | str, sleep_level: int | None):
        self.llm, self.vllm, self.tokenizer, self.device = llm, vllm, tokenizer, torch.device(device)
        self.sleep_level = sleep_level
        self.asleep: set[str] = set()  # the parts that sleep: "weights", "kv_cache"
        self.loaded = True  # whether the engine holds weights it can sample with

    @classmethod
    def from_config(cls, cfg: Config, tokenizer: Any, device: torch.device | str, sleeps: bool) -> VLLMEngine:
        """The engine of `cfg.model` with `cfg.rollout.vllm`'s settings; `sleeps`: between batches (a synchronous
        run)."""
        vllm, settings = import_vllm(), cfg.rollout.vllm
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in this process: weights load by reference
        path = resolve_model_path(cfg.model.path)
        kwargs: dict[str, Any] = {
            "model": path,
            "tokenizer": path,
            "dtype": "auto" if cfg.model.dtype == "auto" else cfg.model.dtype,
            "seed": cfg.train.seed,
            "gpu_memory_utilization": settings.gpu_memory_utilization,
            "enable_sleep_mode": sleeps,
            "enable_prefix_caching": True,  # a prompt's completions share its prefill
            "logprobs_mode": "processed_logprobs",
        }
        if settings.max_model_len is not None:
            kwargs["max_model_len"] = settings.max_model_len
        if "WORLD_SIZE" in os.environ:  # torchrun: each rank's engine in its own process, on its own GPU
            kwargs["distributed_executor_backend"] = "external_launcher"
        llm = vllm.LLM(**kwargs)
        return cls(llm, vllm, tokenizer, device, settings.sleep_level if sleeps else None)

    def generate(self, rows: list[dict[str, Any]], **sampling: Any) -> Rollouts:
        """`hf.sample`'s completions (its keywords), drawn by vLLM (forced tokens are not supported: the collect
        stage's samplers that force them run with `rollout.engine=hf`)."""
        prompt_ids, prompt_mask = tokenize_prompts([r["prompt"] for r in rows], self.tokenizer, self.device)
        return self.generate_tokens(prompt_ids, prompt_mask, rows, **sampling)

    def generate_tokens(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        rows: list[dict[str, Any]],
        *,
        n: int | list[int],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        greedy: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
        forced: list[list[int]] | None = None,
    ) -> Rollouts:
        """`generate` on prompts given as left-padded token ids and their mask (a generation server's requests)."""
        if forced is not None:
            raise ValueError("rollout.engine=vllm cannot force tokens (a roll-in); use rollout.engine=hf")
        if not self.loaded:
            raise RuntimeError("vLLM discarded its weights (rollout.vllm.sleep_level=2) and none were loaded since")
        prompt_ids, prompt_mask = prompt_ids.to(self.device), prompt_mask.to(self.device)
        counts = [n] * len(rows) if isinstance(n, int) else list(n)
        seeds = _seeds(generator, sum(counts))
        requests, params = [], []
        for ids, mask, count in zip(prompt_ids.tolist(), prompt_mask.tolist(), counts, strict=True):
            prompt = {"prompt_token_ids": [t for t, m in zip(ids, mask, strict=True) if m]}
            for _ in range(count):
                requests.append(prompt)
                params.append(self.vllm.SamplingParams(
                    n=1, max_tokens=max_new_tokens, temperature=0.0 if greedy else temperature, top_p=top_p,
                    top_k=top_k if top_k > 0 else -1, logprobs=0, seed=seeds[len(params)]))  # fmt: skip
        self._wake("kv_cache")
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        self._sleep()
        done = [out.outputs[0] for out in outputs]
        tokens = [list(c.token_ids) for c in done]
        logps = [[step[t].logprob for t, step in zip(c.token_ids, c.logprobs, strict=True)] for c in done]
        truncated = [c.finish_reason == "length" for c in done]
        return from_token_lists(prompt_ids, prompt_mask, rows, counts, tokens, logps, truncated, self.tokenizer)

    @staticmethod
    def weights(model: Any) -> Weights:
        """`model`'s weights under their checkpoint names, LoRA merged, one tensor at a time (a generator: a sharded
        model gathers each when it is loaded, so every rank must load them)."""
        return checkpoint_weights(model)

    def load_weights(self, weights: Weights) -> None:
        """Load `weights` into the engine's model (its weights woken first) and drop the prefix cache."""
        self._wake("weights")
        self.llm.apply_model(lambda model: model.load_weights(weights=weights))
        self.llm.reset_prefix_cache()
        self.loaded = True

    def close(self) -> None:
        """Free vLLM's GPU memory for the rest of the process (its engine stops with the `LLM`)."""
        self.llm = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _wake(self, part: str) -> None:
        if part == "kv_cache":
            self._wake("weights")
        if part in self.asleep:
            self.llm.wake_up(tags=[part])
            self.asleep.discard(part)

    def _sleep(self) -> None:
        if self.sleep_level is not None:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = {"weights", "kv_cache"}
            self.loaded = self.sleep_level == 1


def _seeds(generator: torch.Generator | list[torch.Generator] | None, count: int) -> list[int]:
    """One seed per completion: drawn from its own generator (a list), else `count` from the run's one."""
    if isinstance(generator, list):
        return [int(torch.randint(0, 2**31 - 1, (1,), generator=g)) for g in generator]
    seeds = torch.randint(0, 2**31 - 1, (count,), generator=generator, device=getattr(generator, "device", "cpu"))
    return seeds.tolist()
