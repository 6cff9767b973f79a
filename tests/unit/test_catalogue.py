from pathlib import Path

from unipo import algos
from unipo.catalogue import markdown
from unipo.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "algorithms.md"


def test_committed_catalogue_is_current():
    assert DOC.read_text() == markdown(), "docs/algorithms.md is stale: run `unipo list --markdown`"


def test_catalogue_lists_every_component_with_its_tag():
    text = markdown()
    for e in algos.entries():
        assert f"| `{e.name}` |" in text and e.tag.replace("|", "\\|") in text


def test_list_prints_kind_ids_papers_and_tags(capsys):
    assert main(["list", "policy_loss"]) == 0
    out = capsys.readouterr().out
    assert "[policy_loss]" in out and "[advantage]" not in out
    assert "ppo_clip" in out and "arXiv:1707.06347" in out and "[checked: TRL, verl]" in out


def test_list_markdown_writes_a_file(tmp_path):
    target = tmp_path / "cat.md"
    assert main(["list", "--markdown", str(target)]) == 0
    assert target.read_text() == markdown()


def test_verify_nash_prints_the_equilibria_and_the_curves(capsys):
    assert main(["verify", "nash", "--iterations", "40"]) == 0
    out = capsys.readouterr().out
    # the exact Nash equilibrium of the RPS-like matrix is (1/7, 2/7, 4/7)
    assert "Nash equilibrium [0.1429, 0.2857, 0.5714]" in out
    lines = {line.split("  ")[1].strip(): line for line in out.splitlines() if line.startswith("  ")}
    assert {"sppo (average iterate)", "inpo (last)", "nash_md (last)", "nash_mp_recon (last)"} <= set(lines)
