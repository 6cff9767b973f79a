"""ReSeek's context rule and judge reward (ALGORITHMS.md §9 `reseek_judge`): an environment reply the environment
forgets is hidden from every later token by the attention mask the later turns were sampled with, the log-probs
recomputed over the whole trajectory equal the sampled ones, and the search environment's JUDGE action is scored."""

import dataclasses

import pytest
import torch

from tests.integration import envs_for_tests
from unipo.algos import get
from unipo.envs import EnvSettings, env_factory
from unipo.models.loading import load_model_and_tokenizer
from unipo.models.logprobs import completion_logprobs
from unipo.models.tiny import build_tiny_model
from unipo.rollout import multiturn
from unipo.rollout.multiturn import Renderer, rollout
from unipo.trainers.dist import World

ROWS = [{"prompt": [{"role": "user", "content": f"say {i}"}]} for i in range(3)]


@pytest.fixture(scope="module")
def eos_model(tmp_path_factory):
    """A tiny model that ends its turns within a few tokens (as test_multiturn's)."""
    path = build_tiny_model(tmp_path_factory.mktemp("tiny_eos_reseek") / "model", eos_bias=3.0)
    model, tokenizer = load_model_and_tokenizer(str(path))
    return model.eval(), tokenizer


def _forgetful_batch(eos_model):
    model, tokenizer = eos_model
    settings = EnvSettings(max_turns=3, max_tokens=400)
    return rollout(model, tokenizer, ROWS, envs_for_tests.Forgets, settings, n=3, max_new_tokens=10,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip


def test_a_forgotten_reply_is_hidden_from_the_turns_after_the_one_that_read_it(eos_model):
    """`Forgets` forgets reply 1 at its second step: reply 1's message (not the header of the turn after it) is hidden
    from where reply 2 starts, so turn 1 saw it and turn 2 did not; recomputed log-probs equal the sampled ones, and
    equal those of an independent construction (HF's KV cache of everything before reply 2, then turn 2's tokens with
    reply 1's entries masked out); without the mask turn 2's log-probs differ."""
    model, tokenizer = eos_model
    batch = _forgetful_batch(eos_model)
    renderer = Renderer(tokenizer)
    message = renderer.message_len("tool", "obs 1")
    assert 0 < message < len(renderer.ids("tool", "obs 1"))  # the next turn's header stays visible
    three = [i for i, t in enumerate(batch.extras["turns"]) if t == 3]
    assert three  # trajectories that reached the turn after a forgotten reply
    for i in range(batch.num_completions):
        turn, hide = batch.turn_ids[i], batch.hide_from[i]
        if batch.extras["turns"][i] < 3:
            assert not hide.any()  # nothing was forgotten before the episode ended
            continue
        reply1 = int((turn == 0).nonzero().max()) + 1
        reply2 = int((turn == 1).nonzero().max()) + 1
        assert hide.nonzero().squeeze(-1).tolist() == list(range(reply1, reply1 + message))
        assert (hide[reply1 : reply1 + message] == reply2).all()

    logp, _ = completion_logprobs(model, batch)
    policy = batch.loss_mask.bool()
    torch.testing.assert_close(logp[policy], batch.rollout_logp[policy], atol=1e-5, rtol=1e-5)
    whole, _ = completion_logprobs(model, batch, share_prompt=False)  # each row's prompt run again: the same mask
    torch.testing.assert_close(whole[policy], batch.rollout_logp[policy], atol=1e-5, rtol=1e-5)

    i = three[0]
    prompt = batch.prompt_ids[batch.group_ids[i]][batch.prompt_mask[batch.group_ids[i]].bool()]
    ids = torch.cat([prompt, batch.completion_ids[i][batch.completion_mask[i].bool()]])[None]
    start = len(prompt) + int(batch.hide_from[i].max())  # reply 2's first token
    hidden = len(prompt) + batch.hide_from[i].nonzero().squeeze(-1)
    with torch.no_grad():
        head = model(input_ids=ids[:, :start], use_cache=True)
        attn = torch.ones_like(ids)
        attn[0, hidden] = 0
        positions = torch.arange(start, ids.shape[1])[None]
        tail = model(input_ids=ids[:, start:], attention_mask=attn, position_ids=positions, cache=head.cache)
    logits = torch.cat([head.logits[:, -1:], tail.logits[:, :-1]], dim=1).float()
    by_cache = torch.log_softmax(logits, -1).gather(-1, ids[:, start:, None]).squeeze(-1)[0]
    after = torch.arange(batch.completion_ids.shape[1]) >= start - len(prompt)
    later = policy[i] & after
    torch.testing.assert_close(logp[i][later], by_cache[policy[i][after][: by_cache.shape[0]]], atol=1e-5, rtol=1e-5)

    plain, _ = completion_logprobs(model, dataclasses.replace(batch, hide_from=torch.zeros_like(batch.hide_from)))
    assert (plain[i][later] - batch.rollout_logp[i][later]).abs().max() > 1e-3


SCRIPT = [
    "<search>zzz</search>",
    "<judge>No</judge><search>How long is the river Shantubel?</search>",
    "<judge>Yes</judge> 1514",
]
"""A useless search (no passage matches), judged No; the right search, judged Yes; the answer."""


@pytest.mark.parametrize("forget", [True, False])
def test_the_search_environment_judges_forgets_and_scores_as_reseek(forget, tiny_model_dir, monkeypatch):
    """The scripted agent's judgements are recorded against the reference (the result holds the gold answer); with
    `forget` the useless result leaves the context its third turn was written in (not the second's), without it stays
    (the official code); the trajectory stays token-exact; `reseek_judge` adds 0.3 per agreeing judgement."""
    from tests.integration.scripted import ScriptedLM

    _, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    rows = [{"prompt": [{"role": "user", "content": "problem reseek"}], "answer": "1514"}]
    model = ScriptedLM(tokenizer, {"problem reseek": SCRIPT})
    seen = []

    def spy(model, tokenizer, ids, mask, *args, hide_from=None, **kwargs):
        visible = mask.bool() if hide_from is None else mask.bool() & (hide_from == 0)  # what the next token sees
        seen.append(tokenizer.decode(ids[0][visible[0]].tolist()))
        return real(model, tokenizer, ids, mask, *args, hide_from=hide_from, **kwargs)

    real = multiturn.sample_tokens
    monkeypatch.setattr(multiturn, "sample_tokens", spy)
    make = env_factory("search", None, {"judge": True, "forget": forget})
    batch = rollout(model, tokenizer, rows, make, EnvSettings(max_turns=4, max_tokens=1000), n=1, max_new_tokens=128)
    messages = batch.extras["messages"][0]
    assert [m["content"] for m in messages if m["role"] == "assistant"] == SCRIPT
    assert messages[2]["content"] == "<result>no passage found</result>" and "1514" in messages[4]["content"]
    judgements = [info.get("judgement") for info in batch.extras["turn_info"][0]]
    assert judgements == [None, {"said": False, "reference": False}, {"said": True, "reference": True}]
    assert [bool(info.get("forget")) for info in batch.extras["turn_info"][0]] == [False, forget, False]
    assert "no passage found" in seen[1]  # turn 1 judges the result it reads
    assert ("no passage found" in seen[2]) is not forget and "<search>zzz</search>" in seen[2]
    assert "<judge>No</judge>" in seen[2] and seen[2].count("<|im_start|>assistant") == 3  # turn headers kept
    ids = batch.completion_ids[0][batch.completion_mask[0].bool()]
    for k, text in enumerate(SCRIPT):  # token-exact: turn k's trained tokens are the tokens the policy wrote
        assert ids[batch.turn_ids[0][: len(ids)] == k].tolist() == tokenizer(text)["input_ids"] + [
            tokenizer.eos_token_id
        ]
    prompt = batch.prompt_ids[0][batch.prompt_mask[0].bool()]
    assert tokenizer.decode(torch.cat([prompt, ids]).tolist()) == tokenizer.apply_chat_template(
        messages, tokenize=False
    ).removesuffix("\n")
    assert bool(batch.hide_from.any()) is forget
    env = torch.tensor(batch.extras["env_reward"], dtype=torch.float32)
    assert env.tolist() == [1.0]
    shaped = get("reward", "reseek_judge")(env, turn_info=batch.extras["turn_info"])
    torch.testing.assert_close(shaped, torch.tensor([1.6]))
    logged = multiturn.metrics(batch, World())
    assert logged["env/forgotten_mean"] == float(forget) and logged["env/judgements_mean"] == 2.0
    assert logged["env/judge_agreement"] == 1.0 and logged["env/tool_calls_mean"] == 2.0
