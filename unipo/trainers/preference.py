"""Offline preference optimisation (DPO and its family): pairs in, a pairwise loss from the pure layer, AdamW out.

Reference log-probs are computed once for every pair before training (and kept in the run directory), never per
epoch. Chosen and rejected responses of a pair share one prompt forward (the same KV-cache sharing as the RL loop).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from pathlib import Path
from typing import Any

import torch

from unipo import algos
from unipo.config import Config, ConfigError, component_kwargs
from unipo.data.batch import Rollouts, tokenize_prompts
from unipo.data.preference import arithmetic_pairs, load_pairs, validate_pairs
from unipo.data.tasks import PromptStream, arithmetic
from unipo.models.loading import autocast_context, load_model_and_tokenizer
from unipo.models.logprobs import completion_logprobs
from unipo.rewards import text_of
from unipo.trainers import checkpoint
from unipo.trainers.common import RunDir, build_component, build_optimizer, default_output_dir, log, seed_everything
from unipo.trainers.evaluate import evaluate

SUPPLIED = {"chosen_len", "rejected_len"}
"""Keyword tensors this trainer gives a preference loss (response lengths in tokens)."""


def train(cfg: Config) -> Path:
    """Train on preference pairs with `algo.preference`; returns the run directory. Resumes like the RL trainer."""
    if cfg.output_dir is None:
        cfg = cfg.model_copy(update={"output_dir": default_output_dir(cfg)})
    run = RunDir(cfg.output_dir)
    seed_everything(cfg.train.seed)
    loss_fn = _build_loss(cfg)
    if cfg.data.path is None:
        train_pairs, heldout = arithmetic_pairs()
    else:
        pairs = validate_pairs(load_pairs(cfg.data.path), cfg.data.max_bad_frac)
        cut = max(1, len(pairs) // 20)
        train_pairs, heldout = pairs[cut:], pairs[:cut]
    resume, saved = checkpoint.latest(run.checkpoints)
    model, tokenizer = load_model_and_tokenizer(
        str(resume) if resume else cfg.model.path, device=cfg.model.device, dtype=cfg.model.dtype
    )
    model.eval()
    run.prepare(cfg)
    ref_logps = _reference_logps(cfg, run, tokenizer, train_pairs + heldout)  # once, before training
    optimizer, scheduler = build_optimizer(model, cfg)
    generator = torch.Generator()  # nothing is sampled here; kept so checkpoints have one layout
    stream = PromptStream(list(range(len(train_pairs))), cfg.train.seed)
    start = 0
    if saved is not None:
        start, position = checkpoint.restore(saved, optimizer, scheduler, generator)
        stream = PromptStream(list(range(len(train_pairs))), cfg.train.seed, **position)
        run.truncate_metrics(start)
    heldout_ref = ref_logps[len(train_pairs) :]
    if start == 0 and (result := _evaluate(cfg, model, tokenizer, heldout, heldout_ref)):
        run.log({"step": 0, **result})
    for step in range(start + 1, cfg.train.max_steps + 1):
        t0 = time.perf_counter()
        idx = stream.take(cfg.train.prompts_per_step)
        metrics = _update(cfg, model, tokenizer, [train_pairs[i] for i in idx], ref_logps[idx], loss_fn, optimizer)
        scheduler.step()
        run.log({"step": step, **metrics, "lr": scheduler.get_last_lr()[0], "time/step_s": time.perf_counter() - t0})
        log.info(
            "step %d/%d loss=%.4f margin=%.3f", step, cfg.train.max_steps, metrics["loss"], metrics["rewards/margin"]
        )
        if (cfg.train.save_every and step % cfg.train.save_every == 0) or step == cfg.train.max_steps:
            state = checkpoint.trainer_state(optimizer, scheduler, generator, stream.state())
            checkpoint.save(run.checkpoints, step, model, tokenizer, state, keep=cfg.train.keep_checkpoints)
    if cfg.train.max_steps > start and (result := _evaluate(cfg, model, tokenizer, heldout, heldout_ref)):
        run.log({"step": cfg.train.max_steps, **result})
    return run.path


def _build_loss(cfg: Config) -> Any:
    node = cfg.algo.preference
    fn = build_component("preference", node.name, component_kwargs(node))
    params = inspect.signature(algos.get("preference", node.name)).parameters.values()
    needed = {p.name for p in params if p.kind is p.KEYWORD_ONLY and "Tensor" in str(p.annotation)}
    if needed - SUPPLIED and node.name not in _OPTIONAL_INPUTS:
        raise ConfigError(
            f"algo.preference: {node.name!r} needs {', '.join(sorted(needed - SUPPLIED))}, which the offline "
            f"preference trainer does not supply (it gives {', '.join(sorted(SUPPLIED))})"
        )
    return fn, needed & SUPPLIED


_OPTIONAL_INPUTS = {"bco_pair", "kto"}
"""Losses whose extra keyword tensors are optional."""


def _pair_batch(tokenizer: Any, pairs: list[dict[str, Any]], device: torch.device, max_tokens: int) -> Rollouts:
    """Chosen responses (rows 0..B-1) then rejected ones (B..2B-1), sharing each pair's prompt."""
    prompt_ids, prompt_mask = tokenize_prompts([p["prompt"] for p in pairs], tokenizer, device)
    texts = [text_of(p["chosen"]) for p in pairs] + [text_of(p["rejected"]) for p in pairs]
    eos = tokenizer.eos_token_id
    encoded = [(tokenizer(t, add_special_tokens=False)["input_ids"] + [eos])[:max_tokens] for t in texts]
    width = max(len(e) for e in encoded)
    ids = torch.tensor([e + [tokenizer.pad_token_id] * (width - len(e)) for e in encoded], device=device)
    mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encoded], device=device)
    group = torch.arange(len(pairs), device=device).repeat(2)
    return Rollouts(prompt_ids, prompt_mask, ids, mask, group, torch.zeros_like(group, dtype=torch.bool),
                    torch.zeros(ids.shape, device=device))  # fmt: skip


def _sequence_logps(cfg: Config, model: Any, tokenizer: Any, pairs: list[dict[str, Any]]) -> tuple[torch.Tensor, ...]:
    """(chosen_logp, rejected_logp, chosen_len, rejected_len), each [B]: summed response log-probs and lengths."""
    device = next(model.parameters()).device
    batch = _pair_batch(tokenizer, pairs, device, cfg.data.max_response_tokens)
    with autocast_context(model, cfg.model.autocast):
        logp, _ = completion_logprobs(model, batch, share_prompt=cfg.model.share_prompt_forward)
    mask = batch.completion_mask.float()
    seq = (logp * mask).sum(1)  # (2B,)
    lengths = mask.sum(1)
    b = len(pairs)
    return seq[:b], seq[b:], lengths[:b], lengths[b:]


@torch.no_grad()
def _reference_logps(cfg: Config, run: RunDir, tokenizer: Any, pairs: list[dict[str, Any]]) -> torch.Tensor:
    """[P, 2] reference log-probs of (chosen, rejected), computed once from `model.path` and cached in the run dir."""
    cache = run.path / "ref_logps.pt"
    key = hashlib.sha256(json.dumps([cfg.model.path, cfg.data.max_response_tokens, pairs], default=str).encode())
    if cache.exists():
        cached = torch.load(cache)
        if cached.get("key") == key.hexdigest():  # same reference model, same pairs: reuse
            return cached["values"]
    ref, _ = load_model_and_tokenizer(cfg.model.path, device=cfg.model.device, dtype=cfg.model.dtype)
    ref.eval()
    out = []
    for start in range(0, len(pairs), 64):
        chosen, rejected, _, _ = _sequence_logps(cfg, ref, tokenizer, pairs[start : start + 64])
        out.append(torch.stack([chosen, rejected], 1).float().cpu())
    values = torch.cat(out)
    torch.save({"key": key.hexdigest(), "values": values}, cache)
    del ref
    return values


def _update(cfg, model, tokenizer, pairs, ref, loss_fn, optimizer) -> dict[str, float]:
    """One optimizer step over `pairs`, accumulated over micro-batches (the loss is the mean over all pairs)."""
    fn, wanted = loss_fn
    optimizer.zero_grad(set_to_none=True)
    n, total, margins = len(pairs), 0.0, []
    for start in range(0, n, cfg.train.micro_batch_size):
        chunk, ref_chunk = (
            pairs[start : start + cfg.train.micro_batch_size],
            ref[start : start + cfg.train.micro_batch_size],
        )
        chosen, rejected, chosen_len, rejected_len = _sequence_logps(cfg, model, tokenizer, chunk)
        extra = {k: v for k, v in {"chosen_len": chosen_len, "rejected_len": rejected_len}.items() if k in wanted}
        ref_c, ref_r = ref_chunk[:, 0].to(chosen.device), ref_chunk[:, 1].to(chosen.device)
        loss = fn(chosen, rejected, ref_c, ref_r, **extra).sum() / n
        loss.backward()
        total += float(loss.detach())
        margins.append(((chosen - ref_c) - (rejected - ref_r)).detach().float().cpu())
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf")))
    optimizer.step()
    margin = torch.cat(margins)
    accuracy = float((margin > 0).float().mean())
    return {"loss": total, "rewards/margin": float(margin.mean()), "rewards/accuracy": accuracy, "grad_norm": grad_norm}


@torch.no_grad()
def _evaluate(cfg, model, tokenizer, heldout, heldout_ref) -> dict[str, float]:
    """Held-out preference accuracy (implicit reward ranks chosen first); plus greedy accuracy for built-in pairs."""
    if not cfg.eval.num_problems or not heldout:
        return {}
    rows, ref = heldout[: cfg.eval.num_problems], heldout_ref[: cfg.eval.num_problems]
    chosen, rejected, _, _ = _sequence_logps(cfg, model, tokenizer, rows)
    margin = (chosen.float().cpu() - ref[:, 0]) - (rejected.float().cpu() - ref[:, 1])
    out = {"eval/pref_accuracy": float((margin > 0).float().mean())}
    if cfg.data.path is None:  # built-in pairs come from the arithmetic task: also score generation
        task = arithmetic()
        with autocast_context(model, cfg.model.autocast):
            out |= evaluate(model, tokenizer, task.heldout[: cfg.eval.num_problems], task.reward,
                            max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size)  # fmt: skip
    return out
