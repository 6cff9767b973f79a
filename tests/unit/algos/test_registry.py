"""Registry: duplicates and unknown names fail loudly; every entry carries its citation and provenance."""

import re

import pytest
import torch

from unipo import algos
from unipo.algos.registry import register

EXPECTED = {
    "advantage": {"grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"},
    "policy_loss": {"ppo_clip", "dual_clip", "gspo", "cispo"},
    "aggregation": {"token_mean", "token_sum", "seq_mean_token_mean", "seq_mean_token_sum", "seq_sum_constant"},
    "kl": {"k1", "k2", "k3"},
}
CITATION = re.compile(r"arXiv:\d{4}\.\d{4,5}|https?://\S+")


def test_expected_ids_are_registered():
    for kind, ids in EXPECTED.items():
        assert ids <= set(algos.names(kind)), kind


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register("advantage", "grpo", paper="x", tag="y")(lambda rewards, group_ids: rewards)
    assert algos.get("advantage", "grpo").__module__.startswith("unipo.algos.advantages")


def test_unknown_name_lists_known_ones():
    with pytest.raises(KeyError, match="registered:.*grpo.*rloo"):
        algos.get("advantage", "no_such_estimator")
    with pytest.raises(KeyError, match="kinds are"):
        algos.get("no_such_kind", "grpo")


def test_every_entry_documents_paper_tag_and_formula():
    for e in algos.entries():
        doc = e.fn.__doc__ or ""
        first_line = doc.strip().splitlines()[0] if doc.strip() else ""
        if e.name.endswith("_recon"):  # R2: the first line must say it is a reconstruction; the paper is in `paper`
            assert first_line.startswith("Reconstruction of"), f"{e.kind}/{e.name}: R2 first line"
        else:
            assert CITATION.search(first_line), f"{e.kind}/{e.name}: first docstring line needs a citation"
        assert "Args:" in doc and "Returns:" in doc, f"{e.kind}/{e.name}"
        assert e.paper.strip() and e.tag.strip(), f"{e.kind}/{e.name}"


def test_hyperparameter_defaults_are_the_contract():
    params = {(k, n): algos.entry(k, n).params for k, ids in EXPECTED.items() for n in ids}
    # data arguments (mask, num_tokens, num_seqs) are not hyperparameters a recipe can set
    assert params["advantage", "grpo"] == {"scale": "group", "eps": 1e-4, "std_mode": "sample", "singleton": "zero"}
    assert params["advantage", "reinforce_pp_baseline"] == {"eps": 1e-8}
    assert params["advantage", "dr_grpo"] == params["advantage", "rloo"] == {}
    assert params["policy_loss", "ppo_clip"] == {"clip_low": 0.2, "clip_high": 0.2}
    assert params["policy_loss", "dual_clip"] == {"clip_low": 0.2, "clip_high": 0.2, "dual_clip": 3.0}
    assert params["policy_loss", "gspo"] == {"clip_low": 3e-4, "clip_high": 4e-4}
    assert params["policy_loss", "cispo"] == {"cap": 5.0, "cap_mode": "absolute", "clip_low": 0.2, "clip_high": 0.2}
    assert params["aggregation", "seq_sum_constant"] == {"constant": None}
    assert params["aggregation", "token_mean"] == {}


def test_family_signatures():
    rewards, group_ids = torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0, 0, 1])
    mask = torch.tensor([[1, 1], [1, 0], [0, 0]])
    logp = -torch.rand(3, 2)
    for name in EXPECTED["advantage"]:
        adv = algos.get("advantage", name)(rewards, group_ids, mask=None)
        assert adv.shape in {(3,), (3, 2)}, name
    for name in EXPECTED["policy_loss"]:
        loss, metrics = algos.get("policy_loss", name)(logp, logp, rewards, mask)
        assert loss.shape == (3, 2) and "clip/frac" in metrics, name
        for agg in EXPECTED["aggregation"]:
            value = algos.get("aggregation", agg)(loss, mask, num_tokens=3, num_seqs=2)
            assert value.shape == (), agg
    for name in EXPECTED["kl"]:
        assert algos.get("kl", name)(logp, logp).shape == (3, 2), name


def test_method_facts_are_registry_metadata_from_a_fixed_vocabulary():
    from unipo.algos.registry import FACTS

    assert algos.entry("online", "xpo").facts == {"explore_from_ref"}
    assert algos.entry("online", "nash_md").facts == {"mixture_opponent"}
    assert algos.entry("online", "sppo").facts == {"zero_at_tie"}
    assert algos.entry("online", "spo_selfplay").facts == {"rewards_for_rl"}
    assert all(e.facts <= FACTS.keys() for e in algos.entries())
    with pytest.raises(ValueError, match="unknown facts"):
        register("online", "no_such_method", paper="x", tag="x", facts={"explores_a_lot"})
