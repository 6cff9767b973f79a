"""Multi-turn rollouts: trajectories of policy turns and environment replies, held as token ids from the first prompt
to the last token (ALGORITHMS.md §9; `../shared/notes/multiturn.md` §2–§4).

Token-exact by construction: each turn's input is the previous input plus the tokens the policy sampled plus the
environment's tokens; text is decoded only to hand the environment its action and is never encoded back. The
environment's reply is tokenised alone, as the chat template renders it after an assistant turn: the template is
rendered for `[user, assistant]` and for `[user, assistant, <reply>]` with the generation prompt, and the tokens
after the assistant's end-of-turn token are the reply's (TRL's `_get_tool_suffix_ids`, SkyRL's fixed base). So the
boundary tokens the policy does not sample (ChatML's `\\n` after `<|im_end|>`) are inserted with loss 0. A template
that does not render `[user, assistant]` as a prefix of `[user, assistant, tool]` is refused at start-up.

Waves: every live trajectory samples its next turn in one batch (the first turn shares each prompt's KV cache across
its group; later turns left-pad each history); the environments' steps run in threads, each under `env.timeout_s`
(with `env.workers`, each thread waits on an environment in a worker process: envs/workers.py). An environment that
raises or runs past it ends its episode unscored (`env_reward` None: no gradient), counted in `env/errors`; tools
report their own failures to the model (envs.ToolEnv).

An environment may forget its last reply: a step whose `info["forget"]` is true hides that reply (its message, not
the header of the assistant turn after it) from every token after the turn that answered it, which still saw it
(ReSeek's context rule, envs/builtin.py). The reply's tokens stay in the trajectory with their positions;
`Rollouts.hide_from` records the cut, and the later turns are sampled, and their log-probs recomputed, under the same
attention mask (rollout/hf.py `visibility_mask`).

A trajectory ends when the environment says done, after `env.max_turns` turns, or when the token budget
(`env.max_tokens` tokens after the prompt, the environment's included) runs out: a turn cut by the budget is not
sent to the environment and the trajectory is `truncated`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from unipo.envs import Env, EnvSettings, Late, Step, call_all
from unipo.rollout.batch import Rollouts, left_pad, right_pad, tokenize_prompts
from unipo.rollout.hf import _eos_ids, sample_tokens


class Renderer:
    """Token ids of an environment reply as the chat template places it after an assistant turn (module docstring).
    Without a chat template the reply is `\\n<text>\\n`."""

    BASE = ({"role": "user", "content": "u"}, {"role": "assistant", "content": "a"})
    """The fixed conversation a reply is rendered after."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        if self.chat:
            self.before = tokenizer.apply_chat_template(list(self.BASE), tokenize=False)
            end = tokenizer.eos_token or ""
            self.cut = self.before.rfind(end) + len(end) if end and end in self.before else -1
            for role in ("tool", "user"):
                self.text(role, "probe")  # refuse a template that rewrites history before any model runs

    def text(self, role: str, content: str) -> str:
        if not self.chat:
            return f"\n{content}\n"
        message = {"role": role, "content": content}
        after = self.tokenizer.apply_chat_template([*self.BASE, message], tokenize=False, add_generation_prompt=True)
        if not after.startswith(self.before) or self.cut <= self.before.rfind("a"):
            raise ValueError(f"the chat template does not render an assistant turn ending in "
                             f"{self.tokenizer.eos_token!r} as a prefix of the conversation with a {role!r} reply "
                             "after it, so turns cannot be joined as token ids; use a template that keeps history as "
                             "rendered")  # fmt: skip
        return after[self.cut :]

    def ids(self, role: str, content: str) -> list[int]:
        return self.tokenizer(self.text(role, content), add_special_tokens=False)["input_ids"]

    def message_len(self, role: str, content: str) -> int:
        """How many of `ids(role, content)` render the reply itself: all but the header of the next assistant turn
        that the template appends (`<|im_start|>assistant\n`), when the reply's tokens end with that header's own.
        Forgetting a reply hides these tokens, so the turns after it still open with their header."""
        ids = self.ids(role, content)
        if not self.chat:
            return len(ids)
        message = [*self.BASE, {"role": role, "content": content}]
        plain = self.tokenizer.apply_chat_template(message, tokenize=False)
        header = self.tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=True)[len(plain) :]
        tail = self.tokenizer(header, add_special_tokens=False)["input_ids"] if header else []
        return len(ids) - len(tail) if tail and ids[-len(tail) :] == tail else len(ids)


@dataclass
class _Trajectory:
    group: int
    env: Env
    ids: list[int] = field(default_factory=list)  # every token after the prompt
    loss: list[int] = field(default_factory=list)  # 1 on sampled tokens
    logp: list[float] = field(default_factory=list)
    turn: list[int] = field(default_factory=list)  # policy turn of each token, -1 elsewhere
    messages: list[dict[str, str]] = field(default_factory=list)
    turn_rewards: list[float] = field(default_factory=list)
    turn_info: list[dict[str, Any]] = field(default_factory=list)  # each step's `info`
    state_keys: list[Any] = field(default_factory=list)  # the state each policy turn acts in ("" for the prompt)
    next_key: Any = ""
    tool_calls: int = 0
    tool_errors: int = 0
    error: str | None = None  # why the environment failed (the episode is then unscored)
    done: bool = False
    truncated: bool = False
    only_turn: int | None = None  # a branch trains only the turn it branches at (`branch`)
    hide_from: list[int] = field(default_factory=list)  # `Rollouts.hide_from`: 0, or where a forgotten reply hides
    reply: tuple[int, str, str] | None = None  # the last environment reply: its first index, role and text

    def add(self, ids: list[int], logp: list[float] | None, turn: int) -> None:
        trained = logp is not None and self.only_turn in (None, turn)
        self.ids += ids
        self.hide_from += [0] * len(ids)
        self.loss += [int(trained)] * len(ids)
        self.logp += logp if logp is not None else [0.0] * len(ids)
        self.turn += [turn if trained else -1] * len(ids)


def rollout(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    make_env: Callable[[], Env],
    settings: EnvSettings,
    *,
    n: int | list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | list[torch.Generator] | None = None,
    renderer: Renderer | None = None,
) -> Rollouts:
    """`n` trajectories of each row (or `n[i]` of row i), each turn at most `max_new_tokens` tokens (module
    docstring). The batch's completions are whole trajectories; `texts` are their last policy turns; `extras` holds
    `messages` (the conversation), `env_reward` (the sum of turn rewards, None when the environment failed),
    `turn_rewards`, `turn_info` (each step's `info`), `state_keys`, `turns`, `tool_calls`, `tool_errors`."""
    device = next(model.parameters()).device
    counts = [n] * len(rows) if isinstance(n, int) else list(n)
    prompt_ids, prompt_mask = tokenize_prompts([r["prompt"] for r in rows], tokenizer, device)
    trajs = [_Trajectory(g, make_env(), messages=as_messages(rows[g]["prompt"]))
             for g, c in enumerate(counts) for _ in range(c)]  # fmt: skip
    _reset(trajs, rows, settings)
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "greedy": greedy}
    _waves(model, tokenizer, trajs, rows, (prompt_ids, prompt_mask, counts), settings, renderer or Renderer(tokenizer),
           max_new_tokens=max_new_tokens, generator=generator, sampling=sampling)  # fmt: skip
    _close(trajs, settings)
    return _assemble(trajs, prompt_ids, prompt_mask, rows, tokenizer.pad_token_id)


def branch(
    model: Any,
    tokenizer: Any,
    roll_in: Rollouts,
    sources: list[int],
    at: list[int],
    make_env: Callable[[], Env],
    settings: EnvSettings,
    *,
    max_new_tokens: int,
    only_branch_turn: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    renderer: Renderer | None = None,
) -> Rollouts:
    """One branch of trajectory `sources[b]` of `roll_in` at the start of its turn `at[b]` for each b, the sources in
    row order (REFUEL's roll-in, Gao et al. 2024, arXiv:2410.04612; ARPO's partial rollouts, Dong et al. 2025,
    arXiv:2507.19849). A branch holds the roll-in's tokens before that turn; its own environment, fresh, is replayed
    to that state by the roll-in's earlier actions (the replies must come back token for token, else the branch ends
    unscored: branching needs an environment that answers the same actions the same way); then the policy samples
    turn `at[b]` and the episode runs to its end as in `rollout`. A branch at turn 0 is a fresh trajectory. With
    `only_branch_turn` only turn `at[b]` is trained (`loss_mask`, `turn_ids`; REFUEL), the later turns sampled only to
    finish the episode; else every turn is, the replayed ones with the roll-in's behaviour log-probs (ARPO). Returns
    the branches in the order of `sources`, in the roll-in's prompt rows (`group_ids`), with `rollout`'s extras."""
    renderer = renderer or Renderer(tokenizer)
    rows, groups = roll_in.rows, roll_in.group_ids.tolist()
    if any(groups[a] > groups[b] for a, b in zip(sources, sources[1:], strict=False)):
        raise ValueError("branch: the sources must be in the order of their prompt rows")
    only = [h if only_branch_turn else None for h in at]
    trajs = [_Trajectory(groups[p], make_env(), messages=as_messages(rows[groups[p]]["prompt"]), only_turn=o)
             for p, o in zip(sources, only, strict=True)]  # fmt: skip
    _reset(trajs, rows, settings)
    said = {p: _said(roll_in, p) for p in set(sources)}
    for k in range(max(at, default=0)):  # replay turn k where it comes before the branch turn
        now = [(t, p) for t, p, h in zip(trajs, sources, at, strict=True) if k < h and not t.done]
        for t, p in now:
            turn = roll_in.turn_ids[p] == k  # a turn before the last has tokens: the episode went on
            t.add(roll_in.completion_ids[p][turn].tolist(), roll_in.rollout_logp[p][turn].tolist(), k)
            t.state_keys.append(t.next_key)
            t.messages.append({"role": "assistant", "content": said[p][k]})
        _step_envs([t for t, _ in now], settings, renderer, tokenizer)
    for t, p in zip(trajs, sources, strict=True):
        sampled = roll_in.completion_ids[p][roll_in.completion_mask[p].bool()].tolist()
        if t.error is None and (t.done or t.ids != sampled[: len(t.ids)]):
            t.error, t.done = "replay: the environment did not answer the roll-in's actions as it did before", True
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "greedy": False}
    counts = [sum(groups[p] == g for p in sources) for g in range(len(rows))]  # branches per row
    prompts = (roll_in.prompt_ids, roll_in.prompt_mask, counts)
    _waves(model, tokenizer, trajs, rows, prompts, settings, renderer, max_new_tokens=max_new_tokens,
           generator=generator, sampling=sampling)  # fmt: skip
    _close(trajs, settings)
    return _assemble(trajs, roll_in.prompt_ids, roll_in.prompt_mask, rows, tokenizer.pad_token_id)


def _said(batch: Rollouts, p: int) -> list[str]:
    """The policy's turns of trajectory p as text (its assistant messages after the prompt's own)."""
    prompt = as_messages(batch.rows[int(batch.group_ids[p])]["prompt"])
    return [m["content"] for m in batch.extras["messages"][p][len(prompt) :] if m["role"] == "assistant"]


def _reset(trajs: list[_Trajectory], rows: list[dict[str, Any]], settings: EnvSettings) -> None:
    """Each trajectory's environment starts its episode on its row; one that fails ends the episode unscored."""
    resets = call_all([lambda t=t: t.env.reset(rows[t.group]) for t in trajs], _deadline(settings))
    for t, result in zip(trajs, resets, strict=True):
        if isinstance(result, BaseException):
            t.error, t.done = f"reset: {_why(result, settings)}", True


def _deadline(settings: EnvSettings) -> float | None:
    """How long a wave of environment calls may take: `env.timeout_s` in threads; in workers each request is timed on
    its own (a worker runs its requests one at a time, and stops one past `env.timeout_s`), so no overall deadline."""
    return None if settings.workers else settings.timeout_s


def _close(trajs: list[_Trajectory], settings: EnvSettings) -> None:
    """The episodes are over: each environment with a `close()` is closed (an environment in a worker leaves it)."""
    call_all([t.env.close for t in trajs if callable(getattr(t.env, "close", None))], _deadline(settings))


def _waves(
    model: Any,
    tokenizer: Any,
    trajs: list[_Trajectory],
    rows: list[dict[str, Any]],
    prompts: tuple[torch.Tensor, torch.Tensor, list[int]],
    settings: EnvSettings,
    renderer: Renderer,
    *,
    max_new_tokens: int,
    generator: torch.Generator | list[torch.Generator] | None,
    sampling: dict[str, Any],
) -> None:
    """Every live trajectory samples its next turn in one batch, then the environments step, until every episode is
    over (module docstring). `prompts`: the rows' padded prompt ids and mask, and each row's trajectory count."""
    prompt_ids, prompt_mask, counts = prompts
    device = prompt_ids.device
    eos = set(_eos_ids(model, tokenizer, device).tolist())
    starts = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask, strict=True)]
    while live := [i for i, t in enumerate(trajs) if not t.done]:
        caps = [min(max_new_tokens, settings.max_tokens - len(trajs[i].ids)) for i in live]
        gens = [generator[i] for i in live] if isinstance(generator, list) else generator
        if len(live) == len(trajs) and not any(t.ids for t in trajs):  # every prompt's cache is shared by its group
            ids, mask, n_turn, turn_rows = prompt_ids, prompt_mask, counts, rows
        else:
            ids, mask = left_pad([starts[trajs[i].group] + trajs[i].ids for i in live], tokenizer.pad_token_id,
                                 device)  # fmt: skip
            n_turn, turn_rows = 1, [rows[trajs[i].group] for i in live]
        hide = _hidden(trajs, live, mask) if any(any(trajs[i].hide_from) for i in live) else None
        batch = sample_tokens(model, tokenizer, ids, mask, turn_rows, n=n_turn, max_new_tokens=max(caps),
                              generator=gens, hide_from=hide, **sampling)  # fmt: skip
        lengths = batch.completion_mask.sum(1).tolist()
        for j, (i, cap) in enumerate(zip(live, caps, strict=True)):
            t = trajs[i]
            sampled = batch.completion_ids[j, : min(lengths[j], cap)].tolist()
            t.add(sampled, batch.rollout_logp[j, : len(sampled)].tolist(), len(t.state_keys))
            t.state_keys.append(t.next_key)
            t.messages.append({"role": "assistant", "content": tokenizer.decode(sampled, skip_special_tokens=True)})
            if not sampled or sampled[-1] not in eos:  # cut by the budget: not an action the environment sees
                t.truncated = t.done = True
        _step_envs([trajs[i] for i in live if not trajs[i].done], settings, renderer, tokenizer)


def _hidden(trajs: list[_Trajectory], live: list[int], mask: torch.Tensor) -> torch.Tensor:
    """The live trajectories' `hide_from` in the coordinates of their left-padded histories (prompt included)."""
    width = mask.shape[1]
    out = torch.zeros_like(mask, dtype=torch.long)
    for j, i in enumerate(live):
        t = trajs[i]
        offset = width - len(t.ids)  # where the trajectory's first token after the prompt sits
        out[j, offset:] = torch.tensor([h + offset if h else 0 for h in t.hide_from], dtype=torch.long)
    return out


def as_messages(prompt: Any) -> list[dict[str, str]]:
    """A row's prompt as chat messages (a plain string is one user message)."""
    return [dict(m) for m in prompt] if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]


def _step_envs(trajs: list[_Trajectory], settings: EnvSettings, renderer: Renderer, tokenizer: Any) -> None:
    """Each trajectory's environment takes its last turn; its reply is appended (out of the loss) unless the episode
    ends: done, the last allowed turn (`settings.max_turns`), or no room left in the token budget for the reply and
    another turn."""
    results = call_all([lambda t=t: t.env.step(t.messages[-1]["content"]) for t in trajs], _deadline(settings))
    for t, step in zip(trajs, results, strict=True):
        if not isinstance(step, Step):
            what = _why(step, settings) if isinstance(step, BaseException) else f"returned {step!r}"
            t.error, t.done = f"step: {what}", True
            continue
        t.turn_rewards.append(float(step.reward))
        t.turn_info.append(dict(step.info))
        t.tool_calls += int(step.info.get("tool_calls", 0))
        t.tool_errors += int(step.info.get("tool_errors", 0))
        if step.done or step.observation is None or len(t.state_keys) >= settings.max_turns:
            t.done = True
            continue
        observation = _capped(step.observation, settings.max_obs_tokens, tokenizer)
        role = getattr(t.env, "role", "user")
        reply = renderer.ids(role, observation)
        if len(t.ids) + len(reply) >= settings.max_tokens:
            t.done = t.truncated = True
            continue
        if step.info.get("forget") and t.reply is not None:  # the last reply leaves the context of every later token
            start, said_by, text = t.reply
            for k in range(start, start + renderer.message_len(said_by, text)):
                t.hide_from[k] = len(t.ids)
        t.reply = (len(t.ids), role, observation)
        t.add(reply, None, -1)
        t.messages.append({"role": role, "content": observation})
        t.next_key = step.info.get("state_key", step.observation)


def _why(error: BaseException, settings: EnvSettings) -> str:
    """How an environment call failed, in one line."""
    if isinstance(error, Late):
        return f"TimeoutError: no result within env.timeout_s={settings.timeout_s:g} s"
    return f"{type(error).__name__}: {error}"


def _capped(text: str, max_tokens: int, tokenizer: Any) -> str:
    """An observation cut to `max_tokens` tokens (then marked `…`)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens]) + "…"


def _assemble(trajs: list[_Trajectory], prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, rows: list[dict],
              pad: int) -> Rollouts:  # fmt: skip
    device = prompt_ids.device
    ids, mask = right_pad([t.ids for t in trajs], pad, device)
    loss, _ = right_pad([t.loss for t in trajs], 0, device)
    logp, _ = right_pad([t.logp for t in trajs], 0.0, device)
    turns, _ = right_pad([t.turn for t in trajs], -1, device)
    hide, _ = right_pad([t.hide_from for t in trajs], 0, device)
    last = [next((m["content"] for m in reversed(t.messages) if m["role"] == "assistant"), "") for t in trajs]
    extras = {
        "messages": [t.messages for t in trajs],
        "env_reward": [None if t.error else sum(t.turn_rewards) for t in trajs],
        "turn_rewards": [t.turn_rewards for t in trajs],
        "turn_info": [t.turn_info for t in trajs],
        "state_keys": [t.state_keys for t in trajs],
        "turns": [len(t.state_keys) for t in trajs],
        "tool_calls": [t.tool_calls for t in trajs],
        "tool_errors": [t.tool_errors for t in trajs],
        "env_error": [t.error for t in trajs],
    }
    return Rollouts(
        prompt_ids, prompt_mask, ids.long(), mask.long(), torch.tensor([t.group for t in trajs], device=device),
        torch.tensor([t.truncated for t in trajs], device=device), logp.float(), list(rows), last,
        loss_mask=loss.long(), turn_ids=turns.long(), extras=extras, hide_from=hide.long(),
    )  # fmt: skip


def metrics(batch: Rollouts, world: Any) -> dict[str, float]:
    """The environments' side of a multi-turn batch on every rank: mean turns, tool calls and tool errors per
    trajectory, the episodes the environment failed (`env/errors`), replies forgotten per trajectory, and, where the
    environment judges (`info["judgement"]`: ReSeek), judgements per trajectory and the share that agree with the
    reference."""
    x = batch.extras
    judged = [[i["judgement"] for i in steps if i.get("judgement")] for steps in x["turn_info"]]
    rows = [[t, c, e, float(err is not None), len(set(h.tolist()) - {0}), len(j), sum(a["said"] == a["reference"]
             for a in j)] for t, c, e, err, h, j in zip(x["turns"], x["tool_calls"], x["tool_errors"], x["env_error"],
                                                       batch.hide_from, judged, strict=True)]  # fmt: skip
    table = world.gather_rows(torch.tensor(rows, dtype=torch.float32, device=batch.group_ids.device).view(-1, 7))
    mean = table.mean(0).tolist() if table.shape[0] else [0.0] * 7
    out = {"env/turns_mean": mean[0], "env/tool_calls_mean": mean[1], "env/tool_errors_mean": mean[2],
           "env/errors": float(table[:, 3].sum()), "env/forgotten_mean": mean[4]}  # fmt: skip
    if table[:, 5].sum() > 0:
        out |= {"env/judgements_mean": mean[5], "env/judge_agreement": float(table[:, 6].sum() / table[:, 5].sum())}
    return out
