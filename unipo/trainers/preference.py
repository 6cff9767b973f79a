"""Offline preference optimisation (DPO and its family): pairs or lists in, a loss from the pure layer, AdamW out.

An example is a prompt with W responses: a pair (W = 2: chosen, rejected) or a list (W = L, with scores). Reference
log-probs are computed once, per token, for every response before training (and kept in the run directory), never
per epoch; so are the guide model's for TGDPO. The responses of an example share one prompt forward (the same
KV-cache sharing as the RL loop). A pairwise loss given list data trains on each list's best and worst response.

The loss's signature decides what it is fed (ALGORITHMS.md §7): `chosen_len`/`rejected_len` (token counts),
`chosen_rewards`/`rejected_rewards` (the `score_chosen`/`score_rejected` columns), `sample_logp`/`ref_sample_logp`
(`rollout.group_size` fresh samples of the current policy per prompt, HyPO), per-token log-probs with masks and
`guide_*_logp` (TGDPO, guide model `model.guide_path`), `scores` with [B, L] log-probs (listwise LiPO), `value`
(DRO's value model) and `degree_logits`/`degree_labels` (SPO's preference-degree classifier, trainers/degree.py). KTO
trains on the pairs' chosen responses as desirable and rejected ones as undesirable; its reference point z₀ is
estimated, as in TRL, from mismatched pairs (each prompt with the next example's chosen response).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unipo import algos
from unipo.config import Config, ConfigError, component_kwargs
from unipo.data.preference import best_and_worst, responses
from unipo.data.tasks import PromptStream, arithmetic
from unipo.models.loading import autocast_context, default_model_dir, load_model_and_tokenizer, load_policy
from unipo.models.logprobs import completion_logprobs
from unipo.rewards import text_of
from unipo.rollout.batch import Rollouts, right_pad, tokenize_prompts
from unipo.rollout.hf import sample
from unipo.run import setup_progress
from unipo.trainers import checkpoint
from unipo.trainers import critic as critics
from unipo.trainers.common import RunDir, bound_params, build_component, build_optimizer, start_run
from unipo.trainers.degree import DegreeHead, accuracy
from unipo.trainers.evaluate import evaluate
from unipo.trainers.loop import run_steps
from unipo.trainers.preference_data import load_examples

SUPPLIED = {
    "chosen_len", "rejected_len", "chosen_rewards", "rejected_rewards", "sample_logp", "ref_sample_logp",
    "chosen_mask", "rejected_mask", "guide_chosen_logp", "guide_rejected_logp", "scores",
    "kl_logp", "ref_kl_logp", "reward_shift", "chosen_len_mean", "chosen_log_sum_pi_squared",
    "rejected_log_sum_pi_squared", "gold_logp", "gold_len", "gold_len_mean", "value", "degree_logits", "degree_labels",
}  # fmt: skip
"""Keyword tensors this trainer can give a preference loss."""
SHOWN = {"loss": "loss", "margin": "rewards/margins", "acc": "rewards/accuracies", "s/step": "time/step_s"}
"""What the progress line shows for a preference run."""
WPO_INPUT = "chosen_log_sum_pi_squared"
"""Asked for by a loss that weighs pairs by the policy's token probabilities (WPO): the forward then keeps
log Σ_v π(v)² per token."""
OPTIONAL = {"kl_logp", "ref_kl_logp", "reward_shift"}
"""Optional ones, not in `Loss.inputs`: KTO's mismatched-pair KL (supplied when asked for, `Loss.kl`); BCO's reward
shift (left at None)."""


@dataclass
class Loss:
    """`algo.preference` bound to its hyperparameters, and what it must be fed."""

    fn: Any
    inputs: frozenset[str]
    """The keyword tensors it asks for."""
    listwise: bool
    """(logp [B, L], ref_logp [B, L], *, scores): lists, not pairs."""
    kl: bool = False
    """Takes KTO's `kl_logp`/`ref_kl_logp`: each prompt with another example's chosen response."""
    unpaired: bool = False
    """Takes desirable and undesirable examples as two lists (registry fact `unpaired`)."""
    whole_step: bool = False
    """Couples the examples of a batch (AOT sorts them; registry fact `couples_batch`): computed on the whole step in
    one pass, since micro-batches would change it."""
    single: bool = False
    """Trains on each listed response as its own trajectory (registry fact `single_trajectory`, DRO): takes
    single-trajectory rows and lists of one."""

    @property
    def per_token(self) -> bool:
        return "chosen_mask" in self.inputs


def build_loss(cfg: Config) -> Loss:
    node = cfg.algo.preference
    fn = build_component("preference", node.name, component_kwargs(node))
    params = inspect.signature(algos.get("preference", node.name)).parameters.values()
    wanted = frozenset(p.name for p in params if p.kind is p.KEYWORD_ONLY and "Tensor" in str(p.annotation))
    if wanted - SUPPLIED:
        raise ConfigError(f"algo.preference: {node.name!r} needs {', '.join(sorted(wanted - SUPPLIED))}, which the "
                          "offline preference trainer does not supply")  # fmt: skip
    if cfg.train.ppo_epochs != 1:
        raise ConfigError("train.ppo_epochs: the offline preference trainer takes one optimizer step per batch; use 1 "
                          "(more data per step: train.prompts_per_step)")  # fmt: skip
    if "guide_chosen_logp" in wanted and not cfg.model.guide_path:
        raise ConfigError(f"model.guide_path: {node.name!r} needs a guide model (a DPO-trained model whose token "
                          "log-ratios to the reference weight the tokens)")  # fmt: skip
    facts = algos.entry("preference", node.name).facts
    return Loss(fn, wanted - OPTIONAL, listwise="scores" in wanted, kl="kl_logp" in wanted,
                unpaired="unpaired" in facts, whole_step="couples_batch" in facts,
                single="single_trajectory" in facts)  # fmt: skip


def train(cfg: Config) -> Path:
    """Train on preference data with `algo.preference`; returns the run directory. Resumes like the RL trainer."""
    cfg, run = start_run(cfg)
    loss = build_loss(cfg)
    train_rows, heldout = load_examples(cfg, loss)
    resume, saved = checkpoint.latest(run.checkpoints)
    model, tokenizer = load_policy(cfg.model, resume)
    model.eval()
    run.prepare(cfg)
    everything = train_rows + heldout
    ref_logps = _reference_logps(cfg, run, tokenizer, everything, per_token=loss.per_token)  # once, before training
    fixed = {"ref": ref_logps}
    if "guide_chosen_logp" in loss.inputs:
        fixed["guide"] = _reference_logps(cfg, run, tokenizer, everything, cfg.model.guide_path, "guide", True)
    mismatched = []
    if loss.kl:  # KTO's z₀: prompt i with the chosen response of example i + 1
        mismatched = [{"prompt": r["prompt"], "responses": [responses(everything[(i + 1) % len(everything)])[0]]}
                      for i, r in enumerate(everything)]  # fmt: skip
        fixed["kl_ref"] = _reference_logps(cfg, run, tokenizer, mismatched, name="kl_ref")
    models: dict[str, Any] = {}  # what a loss needs beside the policy during training
    if "ref_sample_logp" in loss.inputs:  # HyPO scores fresh samples under the reference
        models["ref"], _ = load_model_and_tokenizer(cfg.model.path, device=cfg.model.device, dtype=cfg.model.dtype)
        models["ref"].eval().requires_grad_(False)
    if "value" in loss.inputs:  # DRO's V_φ(x): a value model trained on the same loss (`critic.*`)
        models["value"] = critics.build(cfg, resume, saved)
    if "degree_logits" in loss.inputs:  # SPO's preference-degree classifier, trained with the policy
        models["degree"] = DegreeHead(cfg, model, bound_params(loss.fn)["max_removed"], saved)
    optimizer, scheduler = build_optimizer(model, cfg)
    generator = torch.Generator(next(model.parameters()).device).manual_seed(cfg.train.seed)
    stream = PromptStream(list(range(len(train_rows))), cfg.train.seed)
    start = 0
    if saved is not None:
        start, position = checkpoint.restore(saved, optimizer, scheduler, generator)
        stream = PromptStream(list(range(len(train_rows))), cfg.train.seed, **position)
        run.truncate_metrics(start)
    heldout_ref = ref_logps[len(train_rows) :]
    samples: list[dict[str, Any]] = []  # the last step's examples with their implicit rewards

    def step_fn(step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        idx = stream.take(cfg.train.prompts_per_step)
        rows, batch_fixed = [train_rows[i] for i in idx], {k: v[idx] for k, v in fixed.items()}
        extra_rows = {"kl": [mismatched[i] for i in idx]} if loss.kl else {}
        metrics, ratios = _update(cfg, model, tokenizer, rows, batch_fixed, loss, optimizer, models, generator,
                                  extra_rows)  # fmt: skip
        samples[:] = _samples(rows, ratios, getattr(cfg.algo.preference, "beta", None), cfg.log.completions_per_step)
        scheduler.step()
        return {**metrics, "lr": scheduler.get_last_lr()[0], "time/step_s": time.perf_counter() - t0}

    def evaluate(step: int) -> dict[str, float]:
        if result := _evaluate(cfg, model, tokenizer, heldout, heldout_ref):
            run.log({"step": step, **result})
        return result

    def state() -> dict[str, Any]:
        out = checkpoint.trainer_state(optimizer.state_dict(), scheduler, generator, stream.state())
        out |= models["degree"].state() if "degree" in models else {}
        return out | ({"critic": models["value"].state()} if "value" in models else {})

    value_model = {critics.SUBDIR: models["value"].model} if "value" in models else {}
    run_steps(cfg, run, model, tokenizer, start, step_fn, evaluate, state, SHOWN, extra_models=value_model,
              samples=lambda: samples)  # fmt: skip
    return run.path


def _response_batch(tokenizer: Any, rows: list[dict[str, Any]], device: torch.device, max_tokens: int) -> Rollouts:
    """The W responses of B examples as B·W completions, response-major (response w of example b is row w·B + b),
    sharing each example's prompt."""
    prompt_ids, prompt_mask = tokenize_prompts([r["prompt"] for r in rows], tokenizer, device)
    per_row = [responses(r) for r in rows]
    width_w = len(per_row[0])
    texts = [per_row[b][w] for w in range(width_w) for b in range(len(rows))]
    ids, mask = right_pad(_encode(tokenizer, texts, max_tokens), tokenizer.pad_token_id, device)
    group = torch.arange(len(rows), device=device).repeat(width_w)
    return Rollouts(prompt_ids, prompt_mask, ids, mask, group, torch.zeros_like(group, dtype=torch.bool),
                    torch.zeros(ids.shape, device=device))  # fmt: skip


def _encode(tokenizer: Any, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Each response's token ids as trained on: the text's tokens, then EOS, cut at `max_tokens`."""
    eos = tokenizer.eos_token_id
    return [(tokenizer(t, add_special_tokens=False)["input_ids"] + [eos])[:max_tokens] for t in texts]


def _token_logps(
    cfg: Config, model: Any, tokenizer: Any, rows: list[dict[str, Any]], moments: bool = False
) -> tuple[torch.Tensor, ...]:
    """(logp, mask), each [B, W, T]: per-token log-probs of every response of each example, and its token mask; with
    `moments`, also log Σ_v π(v)² per token (detached; WPO's weight)."""
    device = next(model.parameters()).device
    batch = _response_batch(tokenizer, rows, device, cfg.data.max_response_tokens)
    with autocast_context(model, cfg.model.autocast):
        logp, _, logits = completion_logprobs(model, batch, share_prompt=cfg.model.share_prompt_forward,
                                              keep_logits=True)  # fmt: skip
    mask = batch.completion_mask.float()
    b, t = len(rows), logp.shape[-1]
    out = [logp * mask, mask]
    if moments:
        out.append(torch.logsumexp(2 * torch.log_softmax(logits.detach(), -1), -1) * mask)
    return tuple(x.view(-1, b, t).transpose(0, 1) for x in out)


def _sequence_logps(cfg: Config, model: Any, tokenizer: Any, pairs: list[dict[str, Any]]) -> tuple[torch.Tensor, ...]:
    """(chosen_logp, rejected_logp, chosen_len, rejected_len), each [B]: summed response log-probs and lengths."""
    logp, mask = _token_logps(cfg, model, tokenizer, pairs)
    seq, lengths = logp.sum(-1), mask.sum(-1)
    return seq[:, 0], seq[:, 1], lengths[:, 0], lengths[:, 1]


@torch.no_grad()
def _reference_logps(
    cfg: Config,
    run: RunDir,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    model_path: str | None = None,
    name: str = "ref",
    per_token: bool = False,
) -> torch.Tensor:
    """Log-probs of every response under a frozen model (the reference `model.path`, or `model_path`): [P, W, T]
    per token (T = `data.max_response_tokens`) or [P, W, 1] summed; computed once and cached in the run directory
    as `<name>_logps.pt`, keyed by everything that changes them (the model's files, precision, data, lengths)."""
    model_path = model_path or cfg.model.path
    cache = run.path / f"{name}_logps.pt"
    m = cfg.model
    settings = [_fingerprint(model_path), m.dtype, m.autocast, m.share_prompt_forward, cfg.data.max_response_tokens]
    key = hashlib.sha256(json.dumps([*settings, per_token, rows], default=str).encode())
    if cache.exists():
        cached = torch.load(cache)
        if cached.get("key") == key.hexdigest():  # same model, same data: reuse
            return cached["values"]
    frozen, _ = load_model_and_tokenizer(model_path, device=m.device, dtype=m.dtype)
    frozen.eval()
    out = torch.zeros(len(rows), len(responses(rows[0])), cfg.data.max_response_tokens if per_token else 1)
    chunks = range(0, len(rows), 64)
    label = f"{name} log-probs of {len(rows)} examples (once, cached in {cache.name})"
    for start in setup_progress(chunks, label, len(chunks), quiet=not cfg.log.progress):
        logp, _ = _token_logps(cfg, frozen, tokenizer, rows[start : start + 64])
        logp = logp if per_token else logp.sum(-1, keepdim=True)
        out[start : start + logp.shape[0], :, : logp.shape[-1]] = logp.float().cpu()
    torch.save({"key": key.hexdigest(), "values": out}, cache)
    del frozen
    return out


def _fingerprint(path: str) -> object:
    """What identifies a model's weights: its files' names, sizes and modification times for a local directory (a
    retrained model at the same path gets new reference log-probs), else the name."""
    folder = default_model_dir() if path == "default" else Path(path)
    if not folder.is_dir():
        return path
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.iterdir()) if f.is_file()]


def _update(cfg, model, tokenizer, rows, fixed, loss: Loss, optimizer, models, generator, extra_rows) -> tuple:
    """One optimizer step over `rows`, accumulated over micro-batches (the loss is the mean over all examples), and one
    of the value model with it when the loss takes `value`. Returns (metrics, each response's log π − log π_ref before
    the step [n, W])."""
    optimizer.zero_grad(set_to_none=True)
    n, total, chosen, rejected, ratios, degree = len(rows), 0.0, [], [], [], [0.0, 0]
    # micro_batch_size counts responses; a loss that couples the batch (AOT) sees the whole step at once
    per_chunk = n if loss.whole_step else max(1, cfg.train.micro_batch_size // len(responses(rows[0])))
    step_inputs = {}  # inputs computed over the whole step, not per micro-batch
    if loss.kl:  # KTO's z₀ from the whole step's mismatched pairs (a detached estimate, as micro-batching must not
        with torch.no_grad():  # change it): policy log-probs now, reference ones from the cache
            kl_rows = extra_rows["kl"]
            kl_logp = [_token_logps(cfg, model, tokenizer, kl_rows[i : i + per_chunk])[0].sum(-1)[:, 0]
                       for i in range(0, n, per_chunk)]  # fmt: skip
        ref_kl = fixed["kl_ref"].sum(-1)[:, 0].to(kl_logp[0].device)
        step_inputs = {"kl_logp": torch.cat(kl_logp), "ref_kl_logp": ref_kl}
    for name, w in (("chosen_len_mean", 0), ("gold_len_mean", 2)):  # batch-token normalisations over the step
        if name in loss.inputs:
            encoded = _encode(tokenizer, [responses(r)[w] for r in rows], cfg.data.max_response_tokens)
            step_inputs[name] = torch.tensor(sum(map(len, encoded)) / n)
    for start in range(0, n, per_chunk):
        chunk = rows[start : start + per_chunk]
        logp, mask, *spp = _token_logps(cfg, model, tokenizer, chunk, moments=WPO_INPUT in loss.inputs)  # [b, W, T]
        t = logp.shape[-1]  # per-token caches: the chunk's responses end by t (zeros after); sums have width 1
        part = {k: v[start : start + len(chunk), :, :t].to(logp.device) for k, v in fixed.items() if k != "kl_ref"}
        part |= {"log_sum_pi_squared": spp[0]} if spp else {}  # of the current policy, detached
        args, extra = _loss_args(cfg, loss, chunk, logp, mask, part, model, tokenizer, models, generator)
        out = loss.fn(*args, **extra, **{k: v.to(logp.device) for k, v in step_inputs.items()})
        value = out.sum() / (n * (out.shape[0] // len(chunk)))  # mean over loss terms (KTO: 2 per pair)
        value.backward()
        total += float(value.detach())
        if "degree_logits" in extra:  # SPO's classifier: how many copies it labels right
            correct, count = accuracy(extra["degree_logits"], extra["degree_labels"])
            degree = [degree[0] + correct, degree[1] + count]
        seq = logp.detach().float().sum(-1)
        ratios.append((seq - part["ref"].float().sum(-1)).cpu())
        pairs = _chosen_rejected(chunk, torch.stack([seq, ratios[-1]], -1))
        chosen, rejected = chosen + [pairs[0]], rejected + [pairs[1]]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf")))
    optimizer.step()
    out = {"loss": total, "grad_norm": grad_norm}
    if "value" in models:
        out |= critics.step(models["value"], cfg)
    if "degree" in models:
        out |= models["degree"].step(cfg) | {"degree/accuracy": degree[0] / degree[1]}
    beta = getattr(cfg.algo.preference, "beta", None)
    out |= _reward_metrics(torch.cat(chosen), torch.cat(rejected), beta, paired="completion" not in rows[0])
    if loss.kl:
        out["kto/z0"] = float((step_inputs["kl_logp"] - step_inputs["ref_kl_logp"]).mean().clamp(min=0))
    return out, torch.cat(ratios)


def _samples(rows: list[dict[str, Any]], ratios: torch.Tensor, beta: float | None, k: int) -> list[dict[str, Any]]:
    """The step's first `k` examples for completions.jsonl: the prompt, its first (chosen) response as the completion,
    the others, and each response's implicit reward β·(log π − log π_ref) (β = 1 for a loss without one)."""
    scale = 1.0 if beta is None else float(beta)
    out = []
    for row, ratio in zip(rows[:k], ratios[:k].tolist(), strict=False):
        first, *others = responses(row)
        sample = {"prompt": text_of(row["prompt"]), "completion": first, "reward": scale * ratio[0]}
        if "reference" in row:  # the gold response (TPO, SLiC-HF): shown, not ranked
            sample["reference"] = others.pop()
            ratio = ratio[:2]
        if others:
            names = ["chosen", "rejected"] if len(others) == 1 else [f"response_{i}" for i in range(len(ratio))]
            sample |= {"rejected": others[0] if len(others) == 1 else others,
                       "rewards": {name: scale * r for name, r in zip(names, ratio, strict=True)}}  # fmt: skip
        if "label" in row:
            sample["label"] = bool(row["label"])
        if len(row.get("scores", ())) == 1:  # a single trajectory: its reward in the data
            sample["score"] = row["scores"][0]
        out.append(sample)
    return out


def _chosen_rejected(rows: list[dict[str, Any]], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-response values `x` [b, W, ...] split into (chosen, rejected) as the data ranks them: the preferred and
    least preferred response of each example (pairs, lists: [b, ...] each), or the desirable and the undesirable
    examples (unpaired: [b_D, ...] and [b_U, ...])."""
    if "completion" in rows[0]:
        label = torch.tensor([r["label"] for r in rows])
        return x[label, 0], x[~label, 0]
    if x.shape[1] == 1:  # single trajectories: nothing is ranked
        return x[:0, 0], x[:0, 0]
    best, worst = torch.tensor([best_and_worst(r["scores"]) if "scores" in r else (0, 1) for r in rows]).T
    return x[torch.arange(len(rows)), best], x[torch.arange(len(rows)), worst]


def _reward_metrics(chosen: torch.Tensor, rejected: torch.Tensor, beta: float | None, paired: bool) -> dict[str, float]:
    """TRL's DPO metrics from (summed log π, log π − log π_ref) of the chosen [b, 2] and rejected [b', 2] responses:
    `rewards/*` are implicit rewards β·(log π − log π_ref) (β = 1 for a loss without one); `rewards/margins` is
    their mean difference and `rewards/accuracies` the share of pairs (unpaired: of desirable × undesirable
    combinations) in which the chosen response's reward is higher; `logps/*` are mean summed log-probs."""
    scale = 1.0 if beta is None else float(beta)
    out = {}
    for name, part in (("chosen", chosen), ("rejected", rejected)):
        if len(part):
            out |= {f"rewards/{name}": scale * float(part[:, 1].mean()), f"logps/{name}": float(part[:, 0].mean())}
    if len(chosen) and len(rejected):
        out |= {"rewards/margins": out["rewards/chosen"] - out["rewards/rejected"],
                "rewards/accuracies": _accuracy(chosen[:, 1], rejected[:, 1], paired)}  # fmt: skip
    return out


def _accuracy(chosen: torch.Tensor, rejected: torch.Tensor, paired: bool) -> float:
    """Share of pairs (unpaired data: of desirable × undesirable combinations) whose chosen value is the higher."""
    margin = chosen - rejected if paired else (chosen[:, None] - rejected[None, :]).flatten()
    return float((margin > 0).float().mean())


def _loss_args(cfg, loss: Loss, rows, logp, mask, fixed, model, tokenizer, models, generator) -> tuple:
    """Positional and keyword arguments of the loss for one micro-batch ([b, W, T] token log-probs in)."""
    ref = fixed["ref"]
    if loss.listwise:
        scores = torch.tensor([r["scores"] for r in rows], dtype=torch.float32, device=logp.device)
        extra = {"scores": scores}
        if "value" in loss.inputs:  # DRO's V_φ(x): the value model's value of the state after each prompt
            firsts = [{"prompt": r["prompt"], "responses": responses(r)[:1]} for r in rows]
            batch = _response_batch(tokenizer, firsts, logp.device, cfg.data.max_response_tokens)
            extra["value"] = critics.prompt_values(models["value"], batch, cfg)
        return (logp.sum(-1), ref.sum(-1)), extra
    if "completion" in rows[0]:  # unpaired (KTO): desirable and undesirable examples, each with its own count
        label = torch.tensor([r["label"] for r in rows], device=logp.device)
        seq, ref_seq = logp.sum(-1)[:, 0], ref.sum(-1)[:, 0]
        return (seq[label], seq[~label], ref_seq[label], ref_seq[~label]), {}
    if loss.per_token:
        args = (logp[:, 0], logp[:, 1], ref[:, 0], ref[:, 1])
        extra = {"chosen_mask": mask[:, 0], "rejected_mask": mask[:, 1]}
        if "guide_chosen_logp" in loss.inputs:
            extra |= {"guide_chosen_logp": fixed["guide"][:, 0], "guide_rejected_logp": fixed["guide"][:, 1]}
    else:
        seq, ref_seq = logp.sum(-1), ref.sum(-1)
        args, extra = (seq[:, 0], seq[:, 1], ref_seq[:, 0], ref_seq[:, 1]), {}
    lengths = mask.sum(-1)
    supplied = {"chosen_len": lambda: lengths[:, 0], "rejected_len": lambda: lengths[:, 1]}
    supplied |= {"gold_logp": lambda: logp.sum(-1)[:, 2], "gold_len": lambda: lengths[:, 2]}
    if "log_sum_pi_squared" in fixed:
        spp = fixed["log_sum_pi_squared"].sum(-1)
        supplied |= {WPO_INPUT: lambda: spp[:, 0], "rejected_log_sum_pi_squared": lambda: spp[:, 1]}
    supplied["chosen_rewards"] = lambda: torch.tensor([float(r["score_chosen"]) for r in rows], device=logp.device)
    supplied["rejected_rewards"] = lambda: torch.tensor([float(r["score_rejected"]) for r in rows], device=logp.device)
    if "degree_logits" in loss.inputs:
        extra["degree_logits"], extra["degree_labels"] = models["degree"].logits(cfg, model, tokenizer, rows)
    if "sample_logp" in loss.inputs:
        sample_logp, ref_sample_logp = _fresh_samples(cfg, model, models["ref"], tokenizer, rows, generator)
        supplied |= {"sample_logp": lambda: sample_logp, "ref_sample_logp": lambda: ref_sample_logp}
    extra |= {k: supplied[k]() for k in loss.inputs if k in supplied and k not in extra}
    return args, extra


def _fresh_samples(cfg, model, ref_model, tokenizer, rows, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """HyPO's on-policy term: k = `rollout.group_size` responses per prompt sampled from the current policy, their
    summed log-probs (with gradient) and their reference log-probs, each [b, k]."""
    r = cfg.rollout
    with autocast_context(model, cfg.model.autocast):
        batch = sample(model, tokenizer, [{"prompt": row["prompt"]} for row in rows], n=r.group_size,
                       max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_k=r.top_k, top_p=r.top_p,
                       generator=generator)  # fmt: skip
        logp, _ = completion_logprobs(model, batch, temperature=r.temperature)
        with torch.no_grad():
            ref_logp, _ = completion_logprobs(ref_model, batch, temperature=r.temperature)
    mask = batch.completion_mask.float()
    per_prompt = (len(rows), r.group_size)  # the samples of a prompt are consecutive
    return (logp * mask).sum(-1).view(per_prompt), (ref_logp.float() * mask).sum(-1).view(per_prompt)


@torch.no_grad()
def _evaluate(cfg, model, tokenizer, heldout, heldout_ref) -> dict[str, float]:
    """Held-out preference accuracy (the implicit reward ranks as the data does, `_accuracy`); plus greedy accuracy
    for the built-in pairs."""
    if not cfg.eval.num_problems or not heldout:
        return {}
    rows, ref = heldout[: cfg.eval.num_problems], heldout_ref[: cfg.eval.num_problems]
    logp, _ = _token_logps(cfg, model, tokenizer, rows)
    chosen, rejected = _chosen_rejected(rows, logp.float().cpu().sum(-1) - ref.sum(-1))
    paired = "completion" not in rows[0]
    out = {"eval/pref_accuracy": _accuracy(chosen, rejected, paired)} if len(chosen) and len(rejected) else {}
    if cfg.data.path is None:  # built-in pairs come from the arithmetic task: also score generation
        task = arithmetic()
        with autocast_context(model, cfg.model.autocast):
            out |= evaluate(model, tokenizer, task.heldout[: cfg.eval.num_problems], task.reward,
                            max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size)  # fmt: skip
    return out
