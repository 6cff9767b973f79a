"""The guides (docs/guides/*.md) cannot rot: every code block runs, on the tiny model (`UNIPO_DEFAULT_MODEL` points
`default` at it), in a fresh directory, in document order. `bash` blocks run in bash with the venv's commands on the
PATH, each `python` block alone in a fresh interpreter (each is self-contained), each `yaml` block is loaded as a
recipe file."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from unipo.config import load

ROOT = Path(__file__).resolve().parents[2]
GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
RUNS = {"bash", "python", "yaml"}


def _blocks(path: Path) -> list[tuple[str, str]]:
    return FENCE.findall(path.read_text())


def test_every_guide_block_is_one_the_check_runs_and_every_link_resolves():
    assert {g.stem for g in GUIDES} >= {"quickstart", "data-and-rewards", "choose-a-method", "add-a-method", "scale",
                                        "report"}  # fmt: skip
    for guide in GUIDES:
        text = guide.read_text()
        assert text.count("```") == 2 * len(_blocks(guide)), f"{guide.name}: an unclosed or indented fence"
        assert {lang for lang, _ in _blocks(guide)} <= RUNS, f"{guide.name}: a block the check would not run"
        for target in re.findall(r"\]\(([^)#:]+)\)", text):
            assert (guide.parent / target).exists(), f"{guide.name}: broken link {target}"


@pytest.mark.slow
@pytest.mark.parametrize("guide", GUIDES, ids=[g.stem for g in GUIDES])
def test_every_code_block_of_the_guide_runs(guide, tiny_model_dir, tmp_path):
    env = {**os.environ, "UNIPO_DEFAULT_MODEL": tiny_model_dir, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    for i, (lang, code) in enumerate(_blocks(guide)):
        where = f"{guide.name} block {i + 1} ({lang})"
        if lang == "yaml":
            recipe = tmp_path / f"block{i + 1}.yaml"
            recipe.write_text(code)
            load(str(recipe))  # a ConfigError names the bad key
            continue
        command = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{where} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
