"""Preference oracles for online preference optimisation: who says P(a ≻ b) for two responses to one prompt.

Every oracle gives `compare(rows, a, b) -> [N]` (P(a_i ≻ b_i), `rows[i]` the dataset row whose prompt both
answer) and `matrix(rows, groups) -> [P, K, K]` (the within-group matrix P[p, i, j] = P(y_i ≻ y_j), with
P + Pᵀ = 1 and ½ on the diagonal). A judge that crashes or answers outside [0, 1] gives ½ (no preference) for that
comparison: the run goes on, the failure is counted in `failures` and logged once.

- `ScoreOracle`: Bradley-Terry on per-response scores, P(a ≻ b) = σ((r_a − r_b)/temperature); the scores come from
  the task's reward functions or from a reward model (`RewardModelScores`, any HF sequence-classification model with
  one output).
- `JudgeOracle`: a pairwise callable `judge(prompt, a, b) -> P(a ≻ b)`; K(K−1)/2 calls per group (P(b ≻ a) is
  1 − P(a ≻ b)).
- `MatrixOracle`: an exact preference matrix over a fixed list of responses (the testbed's game).
"""

from __future__ import annotations

import abc
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from unipo.rewards import text_of

log = logging.getLogger("unipo")


Row = dict[str, Any]


class Oracle(abc.ABC):
    """Base class: subclasses give `compare`; `matrix` asks it for each unordered pair of a group once."""

    failures: int = 0

    @abc.abstractmethod
    def compare(self, rows: Sequence[Row], a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        """[N] P(a_i ≻ b_i) as float64."""

    def matrix(self, rows: Sequence[Row], groups: Sequence[Sequence[str]]) -> torch.Tensor:
        k = len(groups[0])
        if any(len(g) != k for g in groups):
            raise ValueError("every group must have the same number of responses")
        upper = [(i, j) for i in range(k) for j in range(i + 1, k)]
        out = torch.full((len(groups), k, k), 0.5, dtype=torch.float64)
        if not upper:
            return out
        p = self.compare(
            [rows[g] for g in range(len(groups)) for _ in upper],
            [groups[g][i] for g in range(len(groups)) for i, _ in upper],
            [groups[g][j] for g in range(len(groups)) for _, j in upper],
        ).view(len(groups), len(upper))
        for n, (i, j) in enumerate(upper):
            out[:, i, j], out[:, j, i] = p[:, n], 1 - p[:, n]
        return out


class ScoreOracle(Oracle):
    """Bradley-Terry on scores: P(a ≻ b) = σ((r_a − r_b)/temperature), each response scored once per call.

    `score(rows, responses) -> [N]` (`rows[i]` the row response i answers) may return NaN for a response it cannot
    score; comparisons with it are ½.
    """

    def __init__(self, score: Callable[[Sequence[Row], Sequence[str]], torch.Tensor], temperature: float = 1.0):
        self.score, self.temperature = score, temperature

    def compare(self, rows: Sequence[Row], a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        r = self.score(list(rows) * 2, list(a) + list(b)).double()
        p = torch.sigmoid((r[: len(a)] - r[len(a) :]) / self.temperature)
        self.failures += int(p.isnan().sum())
        return p.nan_to_num(0.5)

    def matrix(self, rows: Sequence[Row], groups: Sequence[Sequence[str]]) -> torch.Tensor:
        k = len(groups[0])
        r = self.score([row for row in rows for _ in range(k)], [y for g in groups for y in g])
        return self.matrix_from_scores(r.view(len(groups), k))

    def matrix_from_scores(self, r: torch.Tensor) -> torch.Tensor:
        """[P, K] scores (NaN: unscorable) -> the [P, K, K] Bradley-Terry matrix."""
        r = r.double()
        p = torch.sigmoid((r[:, :, None] - r[:, None, :]) / self.temperature)
        self.failures += int(p.isnan().triu(1).sum())  # one failure per unordered comparison
        p = p.nan_to_num(0.5)
        p.diagonal(dim1=1, dim2=2).fill_(0.5)
        return p


class RewardModelScores:
    """Scores from an HF sequence-classification model with one output (a Bradley-Terry reward model).

    The text scored is the prompt and response through the reward model's chat template when it has one, else
    the prompt followed by the response.
    """

    def __init__(self, path: str, device: torch.device | str = "cpu", batch_size: int = 32, key: str = "online"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from unipo.config import ConfigError

        where = f"{key}.reward_model" if key == "online" else key
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        except OSError as e:
            raise ConfigError(f"{where}: cannot load {path!r} as a sequence-classification model: {e}") from None
        if self.model.config.num_labels != 1:
            raise ConfigError(
                f"{where}: {path!r} has {self.model.config.num_labels} outputs; a Bradley-Terry reward model has one"
            )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size

    def _text(self, prompt: Any, response: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            return self.tokenizer.apply_chat_template(
                [*messages, {"role": "assistant", "content": response}], tokenize=False
            )
        return (prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)) + response

    @torch.no_grad()
    def __call__(self, rows: Sequence[Row], responses: Sequence[str]) -> torch.Tensor:
        texts = [self._text(row["prompt"], r) for row, r in zip(rows, responses, strict=True)]
        device = next(self.model.parameters()).device
        templated = bool(getattr(self.tokenizer, "chat_template", None))  # the template holds the special tokens
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=not templated)
            enc = enc.to(device)
            out.append(self.model(**enc).logits[:, 0].float().cpu())
        return torch.cat(out)


_LOADED: dict[tuple[str, str, int], RewardModelScores] = {}


def loaded_reward_model(path: str, device: str, batch_size: int) -> RewardModelScores:
    """One `RewardModelScores` per (path, device, batch size) in this process: the `reward_model` reward loads its
    model on the first call and keeps it."""
    key = (path, str(device), batch_size)
    if key not in _LOADED:
        _LOADED[key] = RewardModelScores(path, device, batch_size, key="rewards (reward_model)")
    return _LOADED[key]


class JudgeOracle(Oracle):
    """A pairwise judge `judge(prompt, a, b) -> P(a ≻ b)`, called once per comparison."""

    def __init__(self, judge: Callable[[Any, str, str], float]):
        self.judge = judge
        self._warned = False

    def compare(self, rows: Sequence[Row], a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        pairs = zip(rows, a, b, strict=True)
        return torch.tensor([self._one(row["prompt"], x, y) for row, x, y in pairs], dtype=torch.float64)

    def _one(self, prompt: Any, a: str, b: str) -> float:
        try:
            p = float(self.judge(prompt, a, b))
            if not 0.0 <= p <= 1.0:  # also catches NaN
                raise ValueError(f"returned {p}, not a probability in [0, 1]")
            return p
        except Exception as e:  # a crashed judge must not kill the run: no preference for this pair
            self.failures += 1
            if not self._warned:
                self._warned = True
                log.warning("judge %s failed (%s: %s); counting it as a tie, further failures are only counted",
                            getattr(self.judge, "__name__", self.judge), type(e).__name__, e)  # fmt: skip
            return 0.5


class MatrixOracle(Oracle):
    """An exact preference matrix over fixed responses (stripped text); unlisted responses lose to every listed
    one and tie with each other."""

    def __init__(self, responses: Sequence[str], matrix: Sequence[Sequence[float]] | torch.Tensor):
        m = torch.as_tensor(matrix, dtype=torch.float64)
        n = len(responses)
        if m.shape != (n, n):
            raise ValueError(f"the preference matrix must be {n}x{n} for {n} responses; got {tuple(m.shape)}")
        if not torch.allclose(m + m.T, torch.ones_like(m), atol=1e-9) or (m < 0).any() or (m > 1).any():
            raise ValueError("the preference matrix must have entries in [0, 1] and P + Pᵀ = 1")
        self.index = {r.strip(): i for i, r in enumerate(responses)}
        self.m = m

    def compare(self, rows: Sequence[Row], a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        out = []
        for x, y in zip(a, b, strict=True):
            i, j = self.index.get(x.strip()), self.index.get(y.strip())
            out.append(0.5 if i is None and j is None else 0.0 if i is None else 1.0 if j is None else self.m[i, j])
        return torch.tensor(out, dtype=torch.float64)

    @classmethod
    def from_json(cls, path: str) -> MatrixOracle:
        from unipo.config import ConfigError

        try:
            data = json.loads(Path(path).read_text())
            return cls(data["responses"], data["matrix"])
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise ConfigError(f"online.matrix: {path}: {type(e).__name__}: {e}") from None


def task_scores(scorer: Any) -> Callable[[Sequence[Row], Sequence[str]], torch.Tensor]:
    """Scores from the task's reward functions (a `RewardScorer`); a response no function scores gets NaN."""

    def score(rows: Sequence[Row], responses: Sequence[str]) -> torch.Tensor:
        return scorer.combine(scorer(list(rows), list(range(len(rows))), [text_of(r) for r in responses]))

    return score


def from_config(online: Any, scorer: Any, device: Any = "cpu") -> Oracle:
    """The oracle an `OnlineConfig` names; `scorer` (a `RewardScorer`) serves the `task` oracle."""
    from unipo.config import ConfigError
    from unipo.trainers.common import import_object

    temperature = default_temperature(online.oracle, online.temperature)
    if online.oracle == "task":
        return ScoreOracle(task_scores(scorer), temperature)
    if online.oracle == "reward_model":
        if not online.reward_model:
            raise ConfigError("online.reward_model: set the path of a sequence-classification model")
        return ScoreOracle(RewardModelScores(online.reward_model, device), temperature)
    if online.oracle == "judge":
        if not online.judge:
            raise ConfigError("online.judge: set the dotted path of judge(prompt, a, b) -> P(a ≻ b) (oracle judge)")
        try:
            return JudgeOracle(import_object(online.judge))
        except ValueError as e:
            raise ConfigError(f"online.judge: {e}") from None
    if not online.matrix:
        raise ConfigError("online.matrix: set a JSON file with `responses` and `matrix` (oracle matrix)")
    return MatrixOracle.from_json(online.matrix)


def default_temperature(oracle: str, temperature: float | None) -> float:
    """The Bradley-Terry temperature of a score oracle (see `OnlineConfig.temperature`)."""
    if temperature is not None:
        return temperature
    return 1.0 if oracle == "reward_model" else 0.1
