"""A recipe's second update, recorded from the trainer and composed again by hand from the recipe's components.

`record` wraps the RL trainer's update stage: on its second call (the policy is then no longer the reference) it
keeps a copy of the policy, the batch, the advantages and the step's inputs, and (by a step pre-hook) the parameter
gradient at that call's optimizer step, after clipping. `by_hand` then builds the loss of that batch from the
recipe's YAML alone: each component is looked up in the registry and called with the recipe's hyperparameters and
the inputs it declares, taken from the recorded batch — the policy loss on the fresh log-probs (old = their detached
values at the step's first pass), plus the KL to the reference and the regularizers per token, times the token
weights, aggregated with the global token and sequence counts over the whole batch in one pass (no micro-batches, no
skipped completions). Where the recipe's advantage stage is the estimator alone, the advantages are recomputed from
the rewards too. The trainer must give the same loss and gradient.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from unipo import algos
from unipo.models.logprobs import completion_logprobs
from unipo.rollout.batch import Origin
from unipo.trainers import rl
from unipo.trainers.inputs import FROM_LOGITS


def _keep_first_gradient(seen: dict[str, Any], model: Any, optimizer: Any) -> None:
    """Record the parameter gradient (already clipped) into `seen["grads"]` just before `optimizer`'s next step."""

    def before_step(*_: Any) -> None:
        seen.setdefault("grads", {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    optimizer.register_step_pre_hook(before_step)


def _clipped_gradient(model: Any, max_norm: float | None) -> dict[str, torch.Tensor]:
    """The model's gradient by parameter name, scaled as `clip_grad_norm_` scales it."""
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
    scale = min(1.0, (max_norm or float("inf")) / (float(norm) + 1e-6))
    return {n: g * scale for n, g in grads.items()}


def _on_second_call(monkeypatch: Any, module: Any, name: str, keep: Any) -> dict[str, Any]:
    """Replace `module.name` by a wrapper that, on its second call only, lets `keep(seen, *args)` copy what the check
    needs (and install the gradient hook) before the real call, whose result goes to `seen["out"]`; returns `seen`."""
    seen: dict[str, Any] = {}
    calls = []
    real = getattr(module, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            keep(seen, *args, **kwargs)
            seen["out"] = real(*args, **kwargs)
            return seen["out"]
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return seen


def record(monkeypatch: Any, module: Any = rl) -> dict[str, Any]:
    """Wrap the RL trainer's update stage (`module.update`); the returned dict fills on its second call, where the
    policy is no longer the reference (at the first, a KL to it has no gradient, so a KL wired wrong would pass)."""

    def keep(seen, cfg, model, optimizer, scheduler, algo, batch, advantages, inputs, world=None):  # noqa: ANN001, ANN202
        seen.update(model=copy.deepcopy(model), batch=batch, advantages=advantages.clone(), inputs=dict(inputs),
                    algo=algo)  # fmt: skip
        _keep_first_gradient(seen, model, optimizer)

    return _on_second_call(monkeypatch, module, "update", keep)


def _bound(kind: str, node: Any) -> tuple[Any, dict[str, Any], frozenset[str]]:
    """The registered function of a recipe node, its hyperparameters and the inputs it declares with them."""
    entry = algos.entry(kind, node.name)
    params = dict(node.model_extra or {})
    return entry.fn, params, entry.needs(params)


def _call(kind: str, node: Any, *args: Any, available: dict[str, Any], **extra: Any) -> Any:
    fn, params, needs = _bound(kind, node)
    missing = needs - available.keys() - extra.keys()
    assert not missing, f"{kind} {node.name} declares {sorted(missing)}, which the recorded batch lacks"
    return fn(*args, **params, **extra, **{k: available[k] for k in needs if k not in extra})


def _plain_advantages(cfg: Any) -> bool:
    """Whether the recipe's advantage stage is its estimator alone on the (unshaped) rewards."""
    a = cfg.algo
    special = (a.sampler, a.critic, a.credit, a.adv_post, a.shaping, cfg.rewards and len(cfg.rewards) > 1)
    return not any(special)


def _with_controlled_values(cfg: Any, algo: Any) -> Any:
    """A copy of `cfg` whose controlled hyperparameters (R²VPO's dual variable, an adaptive KL coefficient, ...) have
    the values the trainer bound for the recorded step, which its controllers moved after the first."""
    from unipo.trainers import controllers

    cfg = copy.deepcopy(cfg)
    found = controllers.slots(cfg, algo)
    for slot, value in zip(found, controllers.initial(algo, found).values(), strict=True):
        node = cfg.algo.kl if slot.axis == "kl_coef" else getattr(cfg.algo, slot.axis)
        setattr(node if slot.index is None else node[slot.index], slot.param, value)
    return cfg


def by_hand(cfg: Any, seen: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The recorded batch's loss and parameter gradient (clipped at `train.max_grad_norm` as the trainer does) from
    the recipe's components composed here; also checks recomputed advantages where the stage is plain."""
    model, batch, inputs = seen["model"], seen["batch"], seen["inputs"]
    cfg = _with_controlled_values(cfg, seen["algo"])
    a, temperature = cfg.algo, cfg.rollout.temperature
    model.zero_grad()
    mask = batch.loss_mask.float()
    terms = [("policy_loss", a.policy_loss), *[("regularizer", r) for r in a.regularizers],
             *[("token_weight", t) for t in a.token_weights], *([("kl", a.kl)] if a.kl.coef else [])]  # fmt: skip
    needs = [(kind, node, _bound(kind, node)[2]) for kind, node in terms]
    policy_needs = set().union(*(n for _, _, n in needs))
    logp, entropy, logits = completion_logprobs(model, batch, temperature=temperature, with_entropy=True,
                                                entropy_grad="entropy" in policy_needs, keep_logits=True)  # fmt: skip
    old = logp.detach()
    advantages = seen["advantages"]
    available = {**inputs, "old_logp": old, "rollout_logp": batch.rollout_logp, "logp": logp, "entropy": entropy,
                 "group_ids": batch.advantage_groups, "completion_ids": batch.completion_ids,
                 "truncated": batch.truncated, "demo_mask": batch.origin == Origin.DEMONSTRATION,
                 "hint_mask": batch.forced, "retry_pairs": batch.pairs, "logits": logits,
                 "mask": mask}  # fmt: skip
    for kind, node, names in needs:  # inputs from the sampling policy's logits (Lp-Reg, DCPO)
        for name in FROM_LOGITS.keys() & names:
            params = {**algos.entry(kind, node.name).params, **_bound(kind, node)[1]}
            available[name] = FROM_LOGITS[name](logits.detach(), batch.completion_ids, params, temperature)
    if _plain_advantages(cfg):
        again = _call(
            "advantage",
            a.advantage,
            inputs["rewards"],
            batch.advantage_groups,
            available=available,
            mask=batch.loss_mask,
        )
        torch.testing.assert_close(again, advantages, msg="the advantages are not the estimator's on the rewards")
    available["advantages"] = advantages
    per_token, _ = _call("policy_loss", a.policy_loss, logp, old, advantages, mask, available=available)
    if a.kl.coef:
        per_token = per_token + a.kl.coef * _call("kl", a.kl, logp, inputs["ref_logp"], available=available)
    for reg in a.regularizers:
        per_token = per_token + _call("regularizer", reg, logp, old, mask, available=available)[0]
    for weight in a.token_weights:
        per_token = per_token * _call("token_weight", weight, mask, available=available).detach()
    fn, params, _ = _bound("aggregation", a.aggregation)
    if "constant" in algos.entry("aggregation", a.aggregation.name).params:
        params.setdefault("constant", cfg.rollout.max_new_tokens)
    loss = fn(per_token, mask, num_tokens=mask.sum(), num_seqs=batch.num_completions, **params)
    loss.backward()
    return loss.detach(), _clipped_gradient(model, cfg.train.max_grad_norm)


def record_preference(monkeypatch: Any) -> dict[str, Any]:
    """Wrap the offline preference trainer's update; the returned dict fills on its second call (the policy before the
    step, the step's rows, cached reference log-probs and other models, the loss and the clipped gradient). The second
    step, because at the first the policy is the reference, where terms in log π/π_ref vanish (HyPO's KL, KTO's z₀)
    whatever their inputs."""
    from unipo.trainers import preference

    def keep(seen, cfg, model, tokenizer, rows, fixed, loss, optimizer, models, generator, extra_rows):  # noqa: ANN001, ANN202
        state = torch.Generator(generator.device)
        state.set_state(generator.get_state())
        seen.update(model=copy.deepcopy(model), tokenizer=tokenizer, rows=list(rows), fixed=dict(fixed),
                    models=copy.deepcopy(models), generator=state, extra_rows=extra_rows)  # fmt: skip
        _keep_first_gradient(seen, model, optimizer)

    return _on_second_call(monkeypatch, preference, "_update", keep)


PREFERENCE_BY_HAND = {"chosen_len", "rejected_len", "chosen_len_mean", "gold_logp", "gold_len", "gold_len_mean",
                      "chosen_mask", "rejected_mask", "scores", "reward_shift", "chosen_rewards", "rejected_rewards",
                      "guide_chosen_logp", "guide_rejected_logp", "chosen_log_sum_pi_squared",
                      "rejected_log_sum_pi_squared", "kl_logp", "ref_kl_logp", "sample_logp", "ref_sample_logp",
                      "value", "degree_logits", "degree_labels"}  # fmt: skip
"""The loss inputs `by_hand_preference` builds (BCO's optional `reward_shift` the trainer leaves at None, so does
`by_hand_preference`): every input the trainer supplies."""


def preference_inputs(cfg: Any) -> frozenset[str]:
    """The tensors the recipe's preference loss asks for (keyword-only tensor arguments)."""
    import inspect

    params = inspect.signature(algos.get("preference", cfg.algo.preference.name)).parameters.values()
    return frozenset(p.name for p in params if p.kind is p.KEYWORD_ONLY and "Tensor" in str(p.annotation))


def by_hand_preference(cfg: Any, seen: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The recorded step's loss and clipped gradient from the recipe's preference loss called here on all its rows in
    one pass: the mean over its loss terms of fn(policy and reference log-probs of each response, **hyperparameters,
    **the inputs it declares, built from the token masks and the rows)."""
    from unipo.trainers.preference import _token_logps

    model, rows, ref = seen["model"], seen["rows"], seen["fixed"]["ref"]
    model.zero_grad()
    node = cfg.algo.preference
    fn, params, wanted = algos.get("preference", node.name), dict(node.model_extra or {}), preference_inputs(cfg)
    logp, mask = _token_logps(cfg, model, seen["tokenizer"], rows)  # [n, W, T]
    ref = ref[:, :, : logp.shape[-1]]
    seq, ref_seq, lengths = logp.sum(-1), ref.sum(-1), mask.sum(-1)
    width = {"chosen": 0, "rejected": 1, "gold": 2}
    available = {f"{k}_len": lengths[:, w] for k, w in width.items() if w < lengths.shape[1]}
    available |= {f"{k}_len_mean": lengths[:, w].mean() for k, w in width.items() if w < lengths.shape[1]}
    available |= {"gold_logp": seq[:, 2]} if seq.shape[1] > 2 else {}
    available |= {"chosen_mask": mask[:, 0], "rejected_mask": mask[:, 1]}
    available |= _model_inputs(cfg, seen, wanted, logp.shape[-1])
    if "scores" in wanted:
        kw = {k: available[k] for k in wanted - {"scores"}}
        out = fn(seq, ref_seq, **params, scores=torch.tensor([r["scores"] for r in rows], dtype=torch.float32), **kw)
    elif "completion" in rows[0]:  # unpaired: desirable and undesirable examples
        label = torch.tensor([r["label"] for r in rows])
        kw = {k: available[k] for k in wanted}
        out = fn(seq[label, 0], seq[~label, 0], ref_seq[label, 0], ref_seq[~label, 0], **params, **kw)
    elif "chosen_mask" in wanted:  # per-token losses take the token log-probs
        kw = {k: available[k] for k in wanted if k in available}
        out = fn(logp[:, 0], logp[:, 1], ref[:, 0], ref[:, 1], **params, **kw)
    else:
        kw = {k: available[k] for k in wanted if k in available}
        out = fn(seq[:, 0], seq[:, 1], ref_seq[:, 0], ref_seq[:, 1], **params, **kw)
    loss = out.mean()
    loss.backward()
    return loss.detach(), _clipped_gradient(model, cfg.train.max_grad_norm)


def _model_inputs(cfg: Any, seen: dict[str, Any], wanted: frozenset[str], width: int) -> dict[str, torch.Tensor]:
    """The inputs of `wanted` that come from the data's score columns or from models other than the policy: the guide
    model's token log-probs (TGDPO; loaded here from `model.guide_path`), log Σ_v π(v)² per response (WPO), KTO's
    mismatched pairs under the policy (z₀), HyPO's fresh samples (drawn with the step's generator, per micro-batch as
    the trainer draws them), DRO's V(x) (the value model before the step, at the state after the prompt) and SPO's
    degree logits (the head before the step on the policy's last state after each copy of the chosen response)."""
    from unipo.models.loading import load_model_and_tokenizer
    from unipo.trainers.preference import _fresh_samples, _response_batch, _token_logps

    model, tok, rows, out = seen["model"], seen["tokenizer"], seen["rows"], {}
    for side in ("chosen", "rejected"):
        out[f"{side}_rewards"] = torch.tensor([float(r.get(f"score_{side}", "nan")) for r in rows])
    if "guide_chosen_logp" in wanted:
        guide, _ = load_model_and_tokenizer(cfg.model.guide_path)
        with torch.no_grad():
            g = _token_logps(cfg, guide, tok, rows)[0][:, :, :width]
        out |= {"guide_chosen_logp": g[:, 0], "guide_rejected_logp": g[:, 1]}
    if "chosen_log_sum_pi_squared" in wanted:
        moments = _token_logps(cfg, model, tok, rows, moments=True)[2].sum(-1).detach()
        out |= {"chosen_log_sum_pi_squared": moments[:, 0], "rejected_log_sum_pi_squared": moments[:, 1]}
    if "kl_logp" in wanted:
        with torch.no_grad():
            out["kl_logp"] = _token_logps(cfg, model, tok, seen["extra_rows"]["kl"])[0].sum(-1)[:, 0]
        out["ref_kl_logp"] = seen["fixed"]["kl_ref"].sum(-1)[:, 0]
    if "sample_logp" in wanted:
        per_chunk = max(1, cfg.train.micro_batch_size // 2)
        drawn = [_fresh_samples(cfg, model, seen["models"]["ref"], tok, rows[i : i + per_chunk], seen["generator"])
                 for i in range(0, len(rows), per_chunk)]  # fmt: skip
        out |= {"sample_logp": torch.cat([d[0] for d in drawn]), "ref_sample_logp": torch.cat([d[1] for d in drawn])}
    if "value" in wanted:
        batch = _response_batch(tok, rows, torch.device("cpu"), cfg.data.max_response_tokens)  # response-major
        out["value"] = seen["models"]["value"].model(batch)[: len(rows), 0].float()
    if "degree_logits" in wanted:
        out |= _degree_inputs(cfg, seen)
    return out


def _degree_inputs(cfg: Any, seen: dict[str, Any]) -> dict[str, torch.Tensor]:
    """SPO's classifier inputs: copies j = 0..K of each chosen response (RAKE phrases removed), the policy's last
    hidden state after each (its EOS), the head's logits [b, K + 1, K + 1], and the copies' labels."""
    from unipo.data.keyphrases import degraded_copies
    from unipo.data.preference import responses
    from unipo.models.logprobs import completion_hidden
    from unipo.trainers.preference import _response_batch

    head, rows = seen["models"]["degree"], seen["rows"]
    width = head.max_removed + 1
    copies = [degraded_copies(responses(r)[0], head.max_removed) for r in rows]
    batch_rows = [{"prompt": r["prompt"], "responses": c} for r, (c, _) in zip(rows, copies, strict=True)]
    batch = _response_batch(seen["tokenizer"], batch_rows, torch.device("cpu"), cfg.data.max_response_tokens)
    states = completion_hidden(seen["model"], batch, states=True)
    hidden = states[torch.arange(len(states)), batch.completion_mask.sum(-1)]
    logits = head.linear(hidden).view(width, len(rows), width).transpose(0, 1)
    return {"degree_logits": logits, "degree_labels": torch.tensor([k for _, k in copies])}


def assert_same_step(by_hand: tuple[torch.Tensor, dict[str, torch.Tensor]], loss: float, grads: dict) -> None:
    """The composed loss and gradient equal the trainer's (float32, up to the order of summation)."""
    value, composed = by_hand
    assert float(value) == pytest.approx(loss, rel=1e-4, abs=1e-6)
    assert composed.keys() == grads.keys()
    for key, grad in composed.items():
        torch.testing.assert_close(grads[key], grad, rtol=1e-3, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")


def record_online(monkeypatch: Any) -> dict[str, Any]:
    """Wrap the online preference trainer's update; the returned dict fills on its second call (copies of the policy
    and of the anchor π_t, the reference, the batch with any exploration or demonstration rows, the units, their win
    rates and per-row inputs, and the clipped gradient before the first optimizer step)."""
    from unipo.trainers import online_preference

    def keep(seen, s, batch, units, win, per_row):  # noqa: ANN001, ANN202
        seen.update(model=copy.deepcopy(s.model), ref=s.ref, anchor=copy.deepcopy(s.anchor), batch=batch,
                    units=units.clone(), win=win.clone(), per_row=dict(per_row))  # fmt: skip
        _keep_first_gradient(seen, s.model, s.optimizer)

    return _on_second_call(monkeypatch, online_preference, "_update", keep)


def by_hand_online(cfg: Any, seen: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The recorded step's loss and clipped gradient from the recipe's `algo.online` loss called here once on all its
    units: the mean over units of fn(log-probs of the policy, of π_t (the anchor, else the policy's detached values)
    and of π_ref, per token with their mask or summed per response; each unit's response, pair (winner, loser) or
    pair plus exploration response; its win rate and the per-row rewards or values the trainer supplied)."""
    import inspect

    node = cfg.algo.online
    fn, params = algos.get("online", node.name), dict(node.model_extra or {})
    names = set(inspect.signature(fn).parameters)
    model, batch, units, t = seen["model"], seen["batch"], seen["units"], cfg.rollout.temperature
    model.zero_grad()
    logp, _ = completion_logprobs(model, batch, temperature=t)
    mask = batch.completion_mask.float()[:, : logp.shape[1]]
    tokens = {"logp": logp, "prev_logp": logp.detach()}
    with torch.no_grad():
        if seen["anchor"] is not None:
            tokens["prev_logp"] = completion_logprobs(seen["anchor"], batch, temperature=t)[0]
        if seen["ref"] is not None:
            tokens["ref_logp"] = completion_logprobs(seen["ref"], batch, temperature=t)[0]
    args: dict[str, Any] = {}
    if "mask" in names:  # per token, single responses
        args |= {k: v[units[:, 0]] for k, v in tokens.items()} | {"mask": mask[units[:, 0]]}
    else:
        seq = {k: (v * mask).sum(-1)[units] for k, v in tokens.items()}  # [U, width]
        pairs = "win_rate" not in names and "value" not in names
        args |= {k: v[:, :2] if pairs else v[:, 0] for k, v in seq.items()}
        if units.shape[1] == 3:
            args["explore_logp"] = seq["logp"][:, 2]
            if "ref_logp" in seq:
                args["explore_ref_logp"] = seq["ref_logp"][:, 2]
        elif "explore_logp" in names:  # XPO at α = 0: the exploration term weighs nothing
            args |= {"explore_logp": torch.zeros(len(units)), "explore_ref_logp": torch.zeros(len(units))}
        for name, column in seen["per_row"].items():
            args[name] = column[units] if pairs else column[units][:, 0]
    args["win_rate"] = seen["win"]
    loss = fn(**{k: v for k, v in args.items() if k in names}, **params).mean()
    loss.backward()
    return loss.detach(), _clipped_gradient(model, cfg.train.max_grad_norm)
