"""The offline preference trainer on a tiny model: run directory, learning, bad rows, reference computed once."""

import json
import math
from pathlib import Path

import pytest
import torch

from unipo.cli import main
from unipo.trainers import preference

pytestmark = pytest.mark.slow


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = [{"prompt": f"say {i}:", "chosen": "7 7 7", "rejected": f"no {i}"} for i in range(40)]


def test_dpo_learns_the_preference_and_computes_the_reference_once(tiny_model_dir, tmp_path, monkeypatch):
    calls = []
    original = preference._reference_logps
    monkeypatch.setattr(preference, "_reference_logps", lambda *a, **k: calls.append(1) or original(*a, **k))
    data = _pairs(tmp_path / "pairs.jsonl", GOOD)
    run = tmp_path / "run"
    args = ["train", "dpo", f"model.path={tiny_model_dir}", f"data.path={data}", f"output_dir={run}"]
    assert main([*args, "train.max_steps=15", "train.lr=1e-2", "train.prompts_per_step=8", "eval.num_problems=2"]) == 0
    rows = _rows(run)
    steps = [r for r in rows if "loss" in r]
    assert len(calls) == 1 and (run / "ref_logps.pt").exists()
    # policy = reference at the start: every margin is 0 and the DPO loss is log 2
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert steps[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert steps[-1]["rewards/accuracies"] == 1.0 and steps[-1]["loss"] < 0.3
    evals = [r for r in rows if "eval/pref_accuracy" in r]
    assert [r["step"] for r in evals] == [0, 15] and evals[-1]["eval/pref_accuracy"] == 1.0
    # the cache is reused for the same model and pairs, and recomputed (the reference loaded) when the pairs change
    from unipo import config
    from unipo.models.loading import load_model_and_tokenizer
    from unipo.trainers.common import RunDir

    cfg = config.load("dpo", [f"model.path={tiny_model_dir}", f"data.path={data}"])
    _, tok = load_model_and_tokenizer(tiny_model_dir)
    from unipo.data.preference import load_pairs, validate_pairs

    pairs = validate_pairs(load_pairs(str(data)).rows, 0.05)
    cached = torch.load(run / "ref_logps.pt")["values"]

    def no_reference(*_, **__):
        raise AssertionError("reference model loaded again")

    monkeypatch.setattr(preference, "load_model_and_tokenizer", no_reference)
    # the trainer computed train pairs then held-out ones: a seeded 5% of the 40 pairs (2) held out
    from unipo.data.sources import split_heldout

    train, heldout = split_heldout(pairs, 0.05, seed=0)
    assert len(heldout) == 2
    assert torch.equal(original(cfg, RunDir(run), tok, train + heldout), cached)
    with pytest.raises(AssertionError, match="reference model loaded again"):
        original(cfg, RunDir(run), tok, pairs[3:])


def test_bad_rows_are_reported_with_their_numbers(tiny_model_dir, tmp_path, capsys):
    bad = [{"prompt": "a", "chosen": "x", "rejected": "x"}, {"prompt": "b", "chosen": ""}, *GOOD[:3]]
    data = _pairs(tmp_path / "pairs.jsonl", bad)
    args = ["train", "dpo", f"model.path={tiny_model_dir}", f"data.path={data}", f"output_dir={tmp_path / 'run'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        "data.path: 2 of 5 rows are bad" in err
        and f"{data}:1: chosen == rejected" in err
        and f"{data}:2: missing chosen, rejected" in err
    )
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_chat_form_pairs_and_a_tolerated_bad_row(tiny_model_dir, tmp_path):
    chat = [{"prompt": [{"role": "user", "content": f"hi {i}"}],
             "chosen": [{"role": "assistant", "content": "7"}],
             "rejected": [{"role": "assistant", "content": "no"}]} for i in range(30)]  # fmt: skip
    data = _pairs(tmp_path / "pairs.jsonl", [*chat, {"prompt": "x", "chosen": "same", "rejected": "same"}])
    run = tmp_path / "run"
    args = ["train", "ipo", f"model.path={tiny_model_dir}", f"data.path={data}", f"output_dir={run}"]
    assert main([*args, "train.max_steps=2", "train.prompts_per_step=4", "eval.num_problems=0"]) == 0
    assert [r["step"] for r in _rows(run)] == [1, 2]


def test_shared_prompt_sequence_logps_match_separate_forwards(tiny_model_dir):
    from unipo import config
    from unipo.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    cfg = config.load("dpo", ["model.autocast=off"])
    pairs = GOOD[:3]
    chosen, rejected, clen, rlen = preference._sequence_logps(cfg, model.eval(), tok, pairs)
    for i, p in enumerate(pairs):
        for text, value, length in ((p["chosen"], chosen[i], clen[i]), (p["rejected"], rejected[i], rlen[i])):
            prompt = tok(p["prompt"])["input_ids"]
            resp = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            logits = model(input_ids=torch.tensor([prompt + resp])).logits[0, len(prompt) - 1 : -1]
            expected = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(resp)[:, None]).sum()
            torch.testing.assert_close(value, expected, atol=1e-4, rtol=1e-4)
            assert length == len(resp)


LISTS = [{"prompt": f"say {i}:", "responses": ["7 7 7", f"no {i}", "x"], "scores": [2, 1, 0]} for i in range(40)]


def _run(tiny_model_dir, tmp_path, recipe, rows, *extra, name="run"):
    data = _pairs(tmp_path / f"{name}.jsonl", rows)
    run = tmp_path / name
    args = ["train", recipe, f"model.path={tiny_model_dir}", f"data.path={data}", f"output_dir={run}"]
    assert main([*args, "train.prompts_per_step=4", "eval.num_problems=2", *extra]) == 0
    return [r for r in _rows(run) if "loss" in r]


def test_listwise_lipo_on_lists_and_pairwise_dpo_on_their_best_and_worst(tiny_model_dir, tmp_path):
    rows = _run(tiny_model_dir, tmp_path, "dpo", LISTS, "train.max_steps=1", "algo.preference.name=lipo_lambda",
                name="lipo")  # fmt: skip
    # policy = reference: all s = 0, so each of the 3 ordered pairs costs log 2 with its LambdaLoss weight;
    # scores (2, 1, 0) in list order give Σ weights = 2.3690702 (tests/unit/algos/test_preference.py)
    assert rows[0]["loss"] == pytest.approx(2.3690702 * math.log(2), rel=1e-4)
    dpo = _run(tiny_model_dir, tmp_path, "dpo", LISTS, "train.max_steps=1", name="dpo_on_lists")
    assert dpo[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)


def test_listwise_loss_without_lists_and_copg_without_scores_are_config_errors(tiny_model_dir, tmp_path, capsys):
    data = _pairs(tmp_path / "pairs.jsonl", GOOD)
    base = ["train", "dpo", f"model.path={tiny_model_dir}", f"data.path={data}", f"output_dir={tmp_path / 'r'}"]
    assert main([*base, "algo.preference.name=lipo_lambda"]) == 2
    assert "listwise and needs rows with `responses` and `scores`" in capsys.readouterr().err
    assert main([*base, "algo.preference.name=copg"]) == 2
    assert "needs `score_chosen` and `score_rejected`" in capsys.readouterr().err
    assert main([*base, "algo.preference.name=tgdpo"]) == 2
    assert "model.guide_path" in capsys.readouterr().err
    assert main([*base, "train.ppo_epochs=2"]) == 2
    assert "train.ppo_epochs: the offline preference trainer takes one optimizer step" in capsys.readouterr().err


def test_copg_regresses_on_the_score_columns(tiny_model_dir, tmp_path):
    scored = [{**p, "score_chosen": 1.0 + i, "score_rejected": 0.4 + i} for i, p in enumerate(GOOD)]
    rows = _run(tiny_model_dir, tmp_path, "dpo", scored, "train.max_steps=1", "algo.preference.name=copg",
                "algo.preference.beta=0.5", "train.prompts_per_step=8")  # fmt: skip
    # h = 0 at the start: (R − R′)² / (2β) with R − R′ = 0.6 in every pair → 0.36
    assert rows[0]["loss"] == pytest.approx(0.36, rel=1e-5)


def test_tgdpo_with_the_reference_as_guide_is_dpo(tiny_model_dir, tmp_path):
    # r̂ = β·(log π_dpo − log π_ref) = 0 when the guide is the reference, so every token weight is β: DPO exactly
    common = ["train.max_steps=3", "train.lr=1e-2"]
    dpo = _run(tiny_model_dir, tmp_path, "dpo", GOOD, *common, name="dpo")
    tg = _run(tiny_model_dir, tmp_path, "dpo", GOOD, *common, "algo.preference.name=tgdpo",
              f"model.guide_path={tiny_model_dir}", name="tgdpo")  # fmt: skip
    assert [r["loss"] for r in tg] == pytest.approx([r["loss"] for r in dpo], rel=1e-4)
    assert dpo[-1]["loss"] < dpo[0]["loss"]


def test_hypo_and_kto_run_with_their_inputs(tiny_model_dir, tmp_path):
    hypo = _run(tiny_model_dir, tmp_path, "dpo", GOOD, "train.max_steps=1", "algo.preference.name=hypo",
                "rollout.max_new_tokens=6", name="hypo")  # fmt: skip
    # policy = reference: DPO term log 2, and the fresh sample's log-ratio (the KL term's value) is 0
    assert hypo[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    kto = _run(tiny_model_dir, tmp_path, "dpo", GOOD, "train.max_steps=4", "algo.preference.name=kto",
               "train.lr=1e-2", name="kto")  # fmt: skip
    # policy = reference: z₀ = 0 and each term is λ·(1 − σ(0)) = ½ (two terms per pair, averaged)
    assert kto[0]["loss"] == pytest.approx(0.5, abs=1e-5) and kto[0]["kto/z0"] == pytest.approx(0.0, abs=1e-4)
    assert max(r["kto/z0"] for r in kto[1:]) > 0  # the mismatched pairs' KL estimate moves once the policy does


def test_kto_loss_does_not_depend_on_micro_batching(tiny_model_dir, tmp_path):
    # z₀ comes from the whole step's mismatched pairs, so splitting the step into micro-batches changes nothing
    common = ["train.max_steps=3", "algo.preference.name=kto", "train.lr=1e-2", "model.autocast=off",
              "train.prompts_per_step=8"]  # fmt: skip
    whole = _run(tiny_model_dir, tmp_path, "dpo", GOOD, *common, "train.micro_batch_size=16", name="whole")
    split = _run(tiny_model_dir, tmp_path, "dpo", GOOD, *common, "train.micro_batch_size=2", name="split")
    assert [r["loss"] for r in split] == pytest.approx([r["loss"] for r in whole], rel=1e-4)
    assert [r["kto/z0"] for r in split] == pytest.approx([r["kto/z0"] for r in whole], rel=1e-4, abs=1e-6)


def test_rpo_batch_token_nll_does_not_depend_on_micro_batching_and_metrics_follow_trl(tiny_model_dir, tmp_path):
    # chosen responses of unequal lengths: TRL's sft term averages over every chosen token of the step, so the loss
    # is the same whole or split into micro-batches, and differs from per-sequence means (irpo's normalisation)
    rows = [{"prompt": f"say {i}:", "chosen": "7 " * (1 + i % 4), "rejected": f"no {i}"} for i in range(40)]
    common = ["train.max_steps=2", "algo.preference.nll_coef=1.0", "train.lr=1e-2", "model.autocast=off",
              "train.prompts_per_step=8"]  # fmt: skip
    whole = _run(tiny_model_dir, tmp_path, "rpo", rows, *common, "train.micro_batch_size=16", name="whole")
    split = _run(tiny_model_dir, tmp_path, "rpo", rows, *common, "train.micro_batch_size=2", name="split")
    per_seq = _run(tiny_model_dir, tmp_path, "rpo", rows, *common, "algo.preference.nll_norm=sequence", name="seq")
    assert [r["loss"] for r in split] == pytest.approx([r["loss"] for r in whole], rel=1e-5)
    assert abs(per_seq[0]["loss"] - whole[0]["loss"]) > 1e-4  # float32 noise is ~1e-6
    # TRL's names and meanings: implicit rewards β·(log π − log π_ref) (β = 0.01 here), margins their difference
    last = whole[-1]
    assert last["rewards/margins"] == pytest.approx(last["rewards/chosen"] - last["rewards/rejected"], abs=1e-7)
    assert whole[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-6) and whole[0]["logps/chosen"] < 0
    assert {"rewards/accuracies", "logps/rejected"} <= last.keys()


def test_reference_cache_is_recomputed_when_precision_or_the_model_files_change(tiny_model_dir, tmp_path):
    from unipo import config
    from unipo.models.loading import load_model_and_tokenizer
    from unipo.trainers.common import RunDir

    _, tok = load_model_and_tokenizer(tiny_model_dir)
    loads = []
    real = preference.load_model_and_tokenizer

    def counting(*a, **k):
        loads.append(1)
        return real(*a, **k)

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    pairs = GOOD[:4]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(preference, "load_model_and_tokenizer", counting)
        for overrides in (["model.autocast=off"], ["model.autocast=off"], ["model.autocast=bf16"]):
            cfg = config.load("dpo", [f"model.path={tiny_model_dir}", *overrides])
            preference._reference_logps(cfg, run, tok, pairs)
        assert len(loads) == 2  # the second call reused the cache; bf16 log-probs are not float32 ones
        (Path(tiny_model_dir) / "config.json").touch()  # e.g. the model retrained in place
        preference._reference_logps(cfg, run, tok, pairs)
        assert len(loads) == 3


UNPAIRED = [{"prompt": f"say {i}:", "completion": "7 7 7" if i % 3 else f"no {i}", "label": bool(i % 3)}
            for i in range(40)]  # fmt: skip


def test_kto_on_unpaired_rows_and_pairwise_losses_refuse_them(tiny_model_dir, tmp_path, capsys):
    rows = _run(tiny_model_dir, tmp_path, "kto", UNPAIRED, "train.max_steps=6", "train.lr=1e-2", name="kto")
    # policy = reference: every term is λ·(1 − σ(0)) = ½ and z₀ = 0
    assert rows[0]["loss"] == pytest.approx(0.5, abs=1e-5) and rows[0]["kto/z0"] == pytest.approx(0.0, abs=1e-4)
    # then desirable completions rise above undesirable ones (margins over the batch's desirable x undesirable pairs)
    later = [r["rewards/accuracies"] for r in rows[1:] if "rewards/accuracies" in r]
    assert later and min(later) > 0.5 and rows[-1]["loss"] < rows[0]["loss"]
    data = _pairs(tmp_path / "unpaired.jsonl", UNPAIRED)
    args = ["train", "dpo", f"model.path={tiny_model_dir}", f"data.path={data}", f"output_dir={tmp_path / 'r'}"]
    assert main(args) == 2
    assert "unpaired rows (`completion` + `label`) need an unpaired loss (kto" in capsys.readouterr().err
    # APO-zero's unpaired form trains on the same rows, with no reference point: every term is ½ at the start
    apo = _run(tiny_model_dir, tmp_path, "apo_zero_unpaired", UNPAIRED, "train.max_steps=6", "train.lr=1e-2",
               name="apo")  # fmt: skip
    assert apo[0]["loss"] == pytest.approx(0.5, abs=1e-5) and apo[-1]["loss"] < apo[0]["loss"]


def test_wpo_weighs_each_pair_by_the_policys_likelihood_of_both_responses(tiny_model_dir, tmp_path):
    # policy = reference at step 1: each pair's DPO term is log 2, so the loss is log 2 · mean ω with
    # ω = min(1, exp(ℓ_w + ℓ_l)), ℓ = mean over the response's tokens of log π(y_t) − log Σ_v π(v)², from a forward
    # of every row's prompt + response (no prompt sharing) done here
    from unipo.models.loading import load_model_and_tokenizer
    from unipo.models.logprobs import completion_logprobs

    rows = [{"prompt": f"say {i}:", "chosen": "7 7 7" if i % 2 else "7", "rejected": f"no {i} no"} for i in range(8)]
    got = _run(tiny_model_dir, tmp_path, "wpo", rows, "train.max_steps=1", "train.prompts_per_step=8",
               "data.eval_frac=0", "model.autocast=off", name="wpo")  # fmt: skip
    model, tok = load_model_and_tokenizer(tiny_model_dir, device="cpu", dtype="float32")
    batch = preference._response_batch(tok, rows, torch.device("cpu"), 64)
    with torch.no_grad():
        logp, _, logits = completion_logprobs(model.eval(), batch, keep_logits=True, share_prompt=False)
    m = batch.completion_mask.float()
    ell = ((logp - torch.logsumexp(2 * torch.log_softmax(logits, -1), -1)) * m).sum(1) / m.sum(1)  # (2·8,)
    omega = (ell[:8] + ell[8:]).exp().clamp(max=1)
    assert float(omega.max()) < 0.999  # the weights act: off-policy pairs count less
    assert got[0]["loss"] == pytest.approx(math.log(2) * float(omega.mean()), rel=1e-5)


def test_tpo_and_slic_hf_add_their_gold_response_terms_as_composed_by_hand(tiny_model_dir, tmp_path, capsys):
    # policy log-probs of chosen, rejected and the gold `reference` from a forward of every row's prompt + response
    # done here; TPO's NLL averages over every gold token of the step (micro-batches of 2 pairs must not change it)
    import torch.nn.functional as F

    from unipo.models.loading import load_model_and_tokenizer
    from unipo.models.logprobs import completion_logprobs

    rows = [{"prompt": f"say {i}:", "chosen": "7 7", "rejected": f"no {i}", "reference": "7 " * (1 + i % 3)}
            for i in range(8)]  # fmt: skip
    common = ["train.max_steps=1", "train.prompts_per_step=8", "data.eval_frac=0", "model.autocast=off",
              "train.micro_batch_size=6"]  # fmt: skip
    tpo = _run(tiny_model_dir, tmp_path, "tpo", rows, *common, name="tpo")[0]
    slic = _run(tiny_model_dir, tmp_path, "slic_hf", rows, *common, name="slic")[0]
    model, tok = load_model_and_tokenizer(tiny_model_dir, device="cpu", dtype="float32")
    batch = preference._response_batch(tok, rows, torch.device("cpu"), 64)
    with torch.no_grad():
        logp, _ = completion_logprobs(model.eval(), batch, share_prompt=False)
    m = batch.completion_mask.float()
    seq, lengths = (logp * m).sum(1).view(3, 8), m.sum(1).view(3, 8)  # chosen, rejected, gold
    assert lengths[2].tolist() != [lengths[2, 0]] * 8  # unequal gold lengths: the normalisation matters
    pair = -F.logsigmoid(0.01 * (seq[0] - seq[1]))
    assert tpo["loss"] == pytest.approx(float(pair.mean() - seq[2].sum() / lengths[2].sum()), rel=1e-5)
    slic_loss = torch.relu(1.0 - seq[0] + seq[1]) - 0.5 * seq[2]
    assert slic["loss"] == pytest.approx(float(slic_loss.mean()), rel=1e-5)
    # a loss without a gold term scores two responses per pair; a gold loss refuses pairs without one
    dpo = tmp_path / "dpo"
    _run(tiny_model_dir, tmp_path, "dpo", rows, *common, name="dpo")
    assert all("reference" not in json.loads(line) for line in (dpo / "completions.jsonl").read_text().splitlines())
    data = _pairs(tmp_path / "plain.jsonl", GOOD)
    args = ["train", "tpo", f"model.path={tiny_model_dir}", f"data.path={data}", f"output_dir={tmp_path / 'x'}"]
    assert main(args) == 2
    assert "needs a gold response in a `reference` column" in capsys.readouterr().err


def test_dro_offline_trains_its_value_model_with_the_policy(tiny_model_dir, tmp_path):
    from unipo.models.value import load_value_model

    rows = _run(tiny_model_dir, tmp_path, "dro_offline", LISTS, "train.max_steps=3", "critic.lr=1e-2",
                "train.micro_batch_size=3", "model.autocast=off", name="dro")  # fmt: skip
    # step 1: π = π_ref (h = 0) and the value head starts at zero (V ≡ 0), so the loss is ½·mean r² =
    # ½·(4 + 1 + 0)/3 = 5/6 on every list
    assert rows[0]["loss"] == pytest.approx(5 / 6, rel=1e-5)
    assert all(r["critic/grad_norm"] > 0 for r in rows)
    # the value model is saved with the run; its V(x) moved up from 0 towards the mean reward 1 (Adam moves the head's
    # bias by about the learning rate per step, up to 1e-2 on the recipe's schedule; a sign error moves it down)
    value = load_value_model(str(tmp_path / "dro" / "checkpoints" / "step-000003" / "critic"))
    assert 0.01 < float(value.head.bias) <= 0.03


SINGLES = [{"prompt": f"say {i}:", "completion": ["7 7 7", f"no {i}", "x"][i % 3], "score": [2, 1, 0][i % 3]}
           for i in range(60)]  # fmt: skip


def test_dro_offline_on_single_trajectory_rows_and_pairwise_losses_refuse_them(tiny_model_dir, tmp_path, capsys):
    six = ["train.prompts_per_step=6", "log.completions_per_step=6"]
    rows = _run(tiny_model_dir, tmp_path, "dro_offline", SINGLES, "train.max_steps=1", *six, "model.autocast=off",
                name="single")  # fmt: skip
    # π = π_ref and V ≡ 0 at the first step: ½·mean r² over the step's six trajectories; the stream draws the rows in
    # a seeded order, so the step's rewards are read back from its samples
    samples = [json.loads(line) for line in (tmp_path / "single" / "completions.jsonl").read_text().splitlines()]
    scores = [s["score"] for s in samples]
    assert len(scores) == 6 and {s["completion"] for s in samples} <= {"7 7 7", "x"} | {f"no {i}" for i in range(60)}
    assert rows[0]["loss"] == pytest.approx(sum(r * r for r in scores) / 12, rel=1e-5)
    assert "rewards/margins" not in rows[0]  # nothing is ranked
    data = _pairs(tmp_path / "singles.jsonl", SINGLES)
    args = ["train", "dpo", f"model.path={tiny_model_dir}", f"data.path={data}", f"output_dir={tmp_path / 'r'}"]
    assert main(args) == 2
    assert "single-trajectory rows (`completion` + `score`) need a loss that trains on each trajectory alone" in (
        capsys.readouterr().err
    )


def test_dro_offline_resumes_exactly_with_its_value_model(tiny_model_dir, tmp_path):
    from unipo.models.value import load_value_model

    common = ["train.save_every=2", "train.lr=1e-2", "train.lr_schedule=constant", "critic.lr=1e-2",
              "eval.num_problems=0", "model.autocast=off"]  # fmt: skip
    straight = _run(tiny_model_dir, tmp_path, "dro_offline", SINGLES, "train.max_steps=4", *common, name="straight")
    _run(tiny_model_dir, tmp_path, "dro_offline", SINGLES, "train.max_steps=2", *common, name="resumed")
    resumed = _run(tiny_model_dir, tmp_path, "dro_offline", SINGLES, "train.max_steps=4", *common, name="resumed")
    keys = ("step", "loss", "grad_norm", "critic/loss", "critic/grad_norm")
    assert [[r.get(k) for k in keys] for r in straight] == [[r.get(k) for k in keys] for r in resumed]
    assert straight[3]["loss"] != straight[1]["loss"]  # the steps differ, so a restored step 2 is not a re-run
    heads = [
        load_value_model(str(tmp_path / n / "checkpoints/step-000004/critic")).head for n in ("straight", "resumed")
    ]
    assert torch.equal(heads[0].weight, heads[1].weight) and torch.equal(heads[0].bias, heads[1].bias)


KEYED = [{"prompt": f"say {i}:", "chosen": "red apples, blue sea. 7 7", "rejected": f"no {i}"} for i in range(40)]
"""Chosen responses with three key phrases of equal RAKE score (red apples, blue sea, 7 7), so SPO's copies lose 0, 1
and 2 of them."""


def test_spo_aux_recon_adds_a_degree_classifier_that_learns_and_resumes(tiny_model_dir, tmp_path):
    common = ["train.lr=1e-2", "train.lr_schedule=constant", "eval.num_problems=0", "model.autocast=off",
              "train.micro_batch_size=3"]  # fmt: skip
    rows = _run(tiny_model_dir, tmp_path, "spo_aux_recon", KEYED, "train.max_steps=25", *common, name="spo")
    # step 1: π = π_ref (DPO term log 2) and the head at zero (each copy's CE is log 3; argmax picks class 0, the label
    # of one copy in three)
    assert rows[0]["loss"] == pytest.approx(math.log(2) + 0.1 * math.log(3), rel=1e-5)
    assert rows[0]["degree/accuracy"] == pytest.approx(1 / 3)
    assert rows[0]["degree/grad_norm"] > 0
    assert [r["degree/accuracy"] for r in rows[-5:]] == [1.0] * 5  # it tells the copies apart (from step 20 on)
    assert rows[-1]["rewards/accuracies"] == 1.0
    # with λ = 0 the policy's run is DPO's: the degree term is the only difference
    spo0 = _run(tiny_model_dir, tmp_path, "spo_aux_recon", KEYED, "train.max_steps=3", "algo.preference.weight=0",
                *common, name="spo0")  # fmt: skip
    dpo = _run(tiny_model_dir, tmp_path, "dpo", KEYED, "train.max_steps=3", *common, name="dpo")
    pick = [k for r in spo0 for k in (r["loss"], r["grad_norm"])]
    assert pick == pytest.approx([k for r in dpo for k in (r["loss"], r["grad_norm"])], rel=1e-5)
    assert rows[1]["grad_norm"] != pytest.approx(dpo[1]["grad_norm"])  # λ = 0.1: the classifier's gradient reaches π
    # resume: 2 + 2 steps are 4 steps, the head and its optimizer included
    common += ["train.save_every=2"]
    straight = _run(tiny_model_dir, tmp_path, "spo_aux_recon", KEYED, "train.max_steps=4", *common, name="straight")
    _run(tiny_model_dir, tmp_path, "spo_aux_recon", KEYED, "train.max_steps=2", *common, name="resumed")
    resumed = _run(tiny_model_dir, tmp_path, "spo_aux_recon", KEYED, "train.max_steps=4", *common, name="resumed")
    keys = ("step", "loss", "grad_norm", "degree/accuracy", "degree/grad_norm")
    assert [[r[k] for k in keys] for r in straight] == [[r[k] for k in keys] for r in resumed]
