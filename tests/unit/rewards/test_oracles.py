"""Preference oracles: Bradley-Terry on scores, pairwise judges (failures are ties), exact matrices, reward models;
and the geometric-mixture sampler Nash-MD draws its opponent from."""

import math

import pytest
import torch

from unipo.config import ConfigError
from unipo.rewards import oracles

ROWS = [{"prompt": "p0", "answer": "1"}, {"prompt": "p1", "answer": "2"}]


def test_score_oracle_matrix_is_bradley_terry_on_the_scores():
    scores = {"a": 0.0, "b": math.log(3), "c": 1.0}
    oracle = oracles.ScoreOracle(lambda rows, ys: torch.tensor([scores[y] for y in ys]), temperature=1.0)
    m = oracle.matrix(ROWS[:1], [["a", "b", "c"]])[0]
    assert m[1, 0].item() == pytest.approx(0.75)  # σ(ln 3) = 3/4
    assert m[0, 1].item() == pytest.approx(0.25)
    assert m[2, 0].item() == pytest.approx(1 / (1 + math.exp(-1)))
    assert torch.allclose(m + m.T, torch.ones(3, 3, dtype=m.dtype)) and torch.all(m.diagonal() == 0.5)
    assert oracle.compare(ROWS[:1], ["b"], ["a"]).item() == pytest.approx(0.75)
    sharp = oracles.ScoreOracle(oracle.score, temperature=0.5)  # σ(2·ln 3) = 9/10
    assert sharp.compare(ROWS[:1], ["b"], ["a"]).item() == pytest.approx(0.9)


def test_score_oracle_unscorable_response_is_a_counted_tie():
    oracle = oracles.ScoreOracle(lambda rows, ys: torch.tensor([math.nan if y == "x" else 1.0 for y in ys]))
    m = oracle.matrix(ROWS[:1], [["x", "y"]])[0]
    assert m[0, 1].item() == 0.5 and m[1, 0].item() == 0.5 and oracle.failures == 1  # one comparison


def test_task_scores_pass_each_response_its_own_row():
    from unipo.rewards import contains_answer
    from unipo.rewards.scorer import RewardScorer

    score = oracles.task_scores(RewardScorer([contains_answer], [1.0]))
    assert score([ROWS[0], ROWS[1], ROWS[1]], ["1", "1", "2"]).tolist() == [1.0, 0.0, 1.0]


def test_judge_oracle_asks_each_unordered_pair_once_and_fills_the_rest():
    calls = []

    def judge(prompt, a, b):
        calls.append((prompt, a, b))
        return {"ab": 0.8, "ac": 0.3, "bc": 0.6}[a + b]

    m = oracles.JudgeOracle(judge).matrix(ROWS[:1], [["a", "b", "c"]])[0]
    assert calls == [("p0", "a", "b"), ("p0", "a", "c"), ("p0", "b", "c")]
    expected = torch.tensor([[0.5, 0.8, 0.3], [0.2, 0.5, 0.6], [0.7, 0.4, 0.5]], dtype=torch.float64)
    assert torch.allclose(m, expected)


def test_a_crashing_or_out_of_range_judge_gives_ties_and_is_counted(caplog):
    answers = iter([RuntimeError("timeout"), 1.7, float("nan"), 0.9])

    def judge(prompt, a, b):
        x = next(answers)
        if isinstance(x, Exception):
            raise x
        return x

    oracle = oracles.JudgeOracle(judge)
    p = oracle.compare(ROWS * 2, ["a"] * 4, ["b"] * 4)
    assert p.tolist() == [0.5, 0.5, 0.5, 0.9] and oracle.failures == 3
    assert sum("timeout" in r.getMessage() for r in caplog.records) == 1  # logged once, then counted


def test_matrix_oracle_looks_up_listed_responses_and_unlisted_ones_lose():
    from unipo.testbeds.games import RPS_LIKE

    oracle = oracles.MatrixOracle(["rock", "paper", "scissors"], RPS_LIKE)
    p = oracle.compare(ROWS * 3, ["rock", " paper\n", "rock", "???", "??"], ["paper", "scissors", "???", "rock", "?"])
    assert p.tolist() == [0.1, 0.4, 1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="P \\+ Pᵀ = 1"):
        oracles.MatrixOracle(["a", "b"], [[0.5, 0.9], [0.9, 0.5]])
    with pytest.raises(ValueError, match="2x2"):
        oracles.MatrixOracle(["a", "b"], RPS_LIKE)


def test_matrix_oracle_from_json_reports_bad_files(tmp_path):
    good = tmp_path / "game.json"
    good.write_text('{"responses": ["a", "b"], "matrix": [[0.5, 0.2], [0.8, 0.5]]}')
    assert oracles.MatrixOracle.from_json(str(good)).compare(ROWS[:1], ["b"], ["a"]).item() == pytest.approx(0.8)
    bad = tmp_path / "bad.json"
    bad.write_text('{"responses": ["a", "b"]}')
    with pytest.raises(ConfigError, match="online.matrix: .*bad.json.*matrix"):
        oracles.MatrixOracle.from_json(str(bad))


def test_reward_model_oracle_is_bradley_terry_on_the_model_scores(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from unipo.models.tiny import build_tiny_reward_model

    path = str(build_tiny_reward_model(tmp_path / "rm"))
    scores = oracles.RewardModelScores(path, batch_size=2)
    model, tok = AutoModelForSequenceClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    cases = [(ROWS[0], "a"), (ROWS[0], "bb"), (ROWS[1], "c")]

    def direct(text_of_case, special):  # scored one at a time: padding in the oracle's batches must not matter
        with torch.no_grad():
            encoded = [tok(text_of_case(r, y), return_tensors="pt", add_special_tokens=special) for r, y in cases]
            return [model(**e).logits[0, 0].item() for e in encoded]

    def chat(row, y):  # the template holds the special tokens, so none are added again
        return tok.apply_chat_template([{"role": "user", "content": row["prompt"]},
                                        {"role": "assistant", "content": y}], tokenize=False)  # fmt: skip

    expected = direct(chat, False)
    got = scores([r for r, _ in cases], [y for _, y in cases])
    assert got.tolist() == pytest.approx(expected, abs=1e-5)
    p = oracles.ScoreOracle(scores).compare([ROWS[0]], ["a"], ["bb"]).item()
    assert p == pytest.approx(1 / (1 + math.exp(-(expected[0] - expected[1]))), abs=1e-5)
    scores.tokenizer.chat_template = None  # a reward model without a template scores prompt + response
    assert scores([r for r, _ in cases], [y for _, y in cases]).tolist() == pytest.approx(
        direct(lambda r, y: r["prompt"] + y, True), abs=1e-5
    )
    with pytest.raises(ConfigError, match="2 outputs"):
        oracles.RewardModelScores(str(build_tiny_reward_model(tmp_path / "rm2", num_labels=2)))
    # the same scorer as a reward function, configured by name with its path, batched across calls' prompts
    from unipo.config import load
    from unipo.trainers.common import build_rewards

    scorer = build_rewards(load("grpo", [f"rewards=[{{name: reward_model, path: {path}, batch_size: 2}}]"]), [])
    rows = [{"prompt": r["prompt"]} for r, _ in cases]
    got = scorer(rows, [0, 1, 2], [y for _, y in cases])[:, 0]
    assert got.tolist() == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ConfigError, match="cannot load"):
        oracles.RewardModelScores(str(tmp_path / "missing"))


def test_geometric_mixture_logits_and_its_endpoints(tiny_model_dir):
    from unipo.models.loading import load_model_and_tokenizer
    from unipo.models.tiny import build_tiny_model
    from unipo.rollout.hf import GeometricMixture, sample

    policy, tok = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    other_dir = build_tiny_model(tiny_model_dir + "-other", seed=1)
    ref, _ = load_model_and_tokenizer(str(other_dir), device="cpu")
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        mixed = GeometricMixture(policy, ref, 0.25)(input_ids=ids).logits
        expected = 0.25 * ref(input_ids=ids).logits + 0.75 * policy(input_ids=ids).logits
    assert torch.allclose(mixed, expected, atol=1e-6)
    rows = [{"prompt": "What is 1+2?"}]

    def draw(model):
        return sample(model, tok, rows, n=4, max_new_tokens=6, generator=torch.Generator().manual_seed(3))

    assert torch.equal(draw(GeometricMixture(policy, ref, 0.0)).completion_ids, draw(policy).completion_ids)
    assert torch.equal(draw(GeometricMixture(policy, ref, 1.0)).completion_ids, draw(ref).completion_ids)
    assert not torch.equal(draw(policy).completion_ids, draw(ref).completion_ids)  # the endpoints differ
