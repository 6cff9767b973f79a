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


# every id the loop issue names (samplers §6, critics §10, controllers, the rest of §1–§4)
LOOP_ISSUE_IDS = """dynamic_sampling pf_ppo red_drop d3s_sample_recon low_var_group_filter early_stop_recon
knapsack_rl gdro_recon
xrpo_alloc_recon v0_budget exit_buffer ghpo igpo_inpaint scaf_grpo hpt gt_in_group_recon icpo_recon sage_recon
igrpo arpo_gui_replay spear_sil_recon dr_po rex_rag_probe aepo ppo_gae t_ppo_recon kl_adaptive_ctrl
adaptive_entropy epo_smooth_recon r2vpo_recon adv_post spo_segment gspo_token rex_rag_mis_recon tpsft_recon
otr_recon bupo_recon r3l_pivot_recon positive_amplify_recon capo_recon ref_sync onpolicy_distill
kepo_gated_distill_recon srpo_routed_recon om_chi2_recon gardo_recon""".split()


# ALGORITHMS.md §5 as the rewards issue names it (its `hapo` is registered as `hapo_recon`: a reconstruction)
REWARD_SHAPING_IDS = """weighted_sum normalize_then_sum gated_hierarchical_recon dynamic_reward_weights barfi
dapo_overlong stop_penalty reward_scale_clip kimi_length grpo_lambda hapo_recon soft_multichoice fapo noisy_verifier
otc_tool rto_token_reward judge_expected_score gcpo_aux_recon icpo_expert_bonus_recon refcritic_reward_recon""".split()


def test_known_gaps_are_not_registered_and_every_named_id_is_one_or_the_other():
    from unipo.algos.gaps import GAPS

    registered = {(e.kind, e.name) for e in algos.entries()}
    assert not registered & GAPS.keys()
    gap_ids = {name for _, name in GAPS}
    assert set(LOOP_ISSUE_IDS) <= {e.name for e in algos.entries()} | gap_ids
    aliases = {name for names in algos.registry.ALIASES.values() for name in names}  # e.g. TRL's names
    assert {("reward", n) for n in REWARD_SHAPING_IDS if n not in aliases} <= registered | GAPS.keys()
    text = DOC.read_text()
    assert all(f"- `{name}`: " in text for name in gap_ids)
