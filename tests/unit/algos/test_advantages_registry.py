"""The advantage family's contract: signatures, citations, provenance tags and rule R2 for every registered id."""

import inspect

import pytest
import torch

from unipo import algos

IDS = algos.names("advantage")
NEW_IDS = [
    "group_mean_batch_std",
    "remax",
    "reinforce_pp",
    "flash_reinforce",
    "opo",
    "grpo_passk",
    "gpg",
    "optimal_token_baseline",
    "bnpo",
    "gdpo",
    "xrpo_sharpen",
    "red_weight",
    "p3o_pairwise",
    "g2rpo_recon",
    "a_grae_recon",
    "copo_recon",
]


def test_every_requested_id_is_registered():
    assert set(NEW_IDS + ["grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"]) <= set(IDS)


@pytest.mark.parametrize("name", IDS)
def test_family_signature(name):
    params = list(inspect.signature(algos.get("advantage", name)).parameters.values())
    assert [p.name for p in params[:2]] == ["rewards", "group_ids"]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params[:2])
    rest = params[2:]
    assert rest[0].name == "mask" and rest[0].default is None
    for p in rest:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, p.name
        if "Tensor" in str(p.annotation):
            assert p.default is None, f"{p.name}: extra tensors are optional keywords"
        else:
            assert isinstance(p.default, (bool, int, float, str)), f"{p.name}: hyperparameters need a scalar default"


@pytest.mark.parametrize("name", IDS)
def test_docstring_citation_and_tag(name):
    entry = algos.entry("advantage", name)
    doc = inspect.getdoc(entry.fn)
    assert doc and "Args:" in doc and "Returns:" in doc
    assert entry.paper and entry.tag
    reconstructed = "reconstructed" in entry.tag
    assert reconstructed == name.endswith("_recon"), "R2: a reconstruction is registered only as <id>_recon"
    if reconstructed:
        assert doc.startswith("Reconstruction of ") and "from its abstract; not the published rule" in doc
    assert "unknown" not in entry.tag, "R3: nothing registered may be a stub"


@pytest.mark.parametrize("name", ["grpo", "gpg", "p3o_pairwise", "g2rpo_recon", "copo_recon", "red_weight"])
def test_integer_rewards_are_accepted(name):
    adv = algos.get("advantage", name)(torch.tensor([1, 0, 1, 1]), torch.tensor([0, 0, 1, 1]))
    assert adv.dtype == torch.get_default_dtype() and adv.shape == (4,)
