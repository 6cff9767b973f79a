"""capo_recon (reconstruction): the Fisher score of a token's policy-gradient step in logit space, and the rejection
of the batch's highest scores within the budget."""

import pytest
import torch

from unipo import algos
from unipo.algos.curvature import fisher_score
from unipo.algos.ops import power_sums

capo = algos.get("token_weight", "capo_recon")


def test_fisher_score_is_half_the_quadratic_form_of_the_softmax_fisher():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 6, generator=g, dtype=torch.float64) * 2
    ids = torch.randint(0, 6, (3, 4), generator=g)
    adv = torch.randn(3, 4, generator=g, dtype=torch.float64)
    pi = torch.softmax(logits, -1)
    logp = torch.log_softmax(logits, -1).gather(-1, ids[..., None])[..., 0]
    s2, s3 = power_sums(logits)
    got = fisher_score(adv, logp, s2.double(), s3.double())
    for i in range(3):
        for t in range(4):
            p = pi[i, t]
            fisher = torch.diag(p) - torch.outer(p, p)
            grad = adv[i, t] * (torch.nn.functional.one_hot(ids[i, t], 6).double() - p)  # ∇_z A·log π(y)
            assert float(got[i, t]) == pytest.approx(0.5 * float(grad @ fisher @ grad), rel=1e-6, abs=1e-12)


def test_fisher_score_is_the_second_order_kl_of_the_step():
    # theory: KL(π_z ‖ π_{z+εg}) = ½ε²·gᵀFg + O(ε³)
    logits = torch.tensor([[[1.0, -0.5, 0.2, 2.0]]], dtype=torch.float64)
    y, adv, eps = 1, 1.5, 1e-3
    pi = torch.softmax(logits[0, 0], -1)
    grad = adv * (torch.nn.functional.one_hot(torch.tensor(y), 4).double() - pi)
    moved = torch.log_softmax(logits[0, 0] + eps * grad, -1)
    kl = float((pi * (pi.log() - moved)).sum())
    s2, s3 = power_sums(logits)
    score = fisher_score(torch.tensor([[adv]], dtype=torch.float64), pi.log()[y].view(1, 1), s2.double(), s3.double())
    assert kl / eps**2 == pytest.approx(float(score), rel=1e-2)


def test_capo_rejects_the_highest_scores_within_the_budget_by_hand():
    # two-token vocabulary with π = (½, ½): gᵀFg = A²·¼, so s = A²/8; a certain token (π_y = 1) has s = 0
    half = dict(p=0.5, s2=0.5, s3=0.25)
    sure = dict(p=1.0, s2=1.0, s3=1.0)
    tokens = [(half, 2.0), (half, 1.0), (sure, 5.0), (half, -3.0)]  # scores 0.5, 0.125, 0, 1.125
    logp = torch.tensor([[torch.log(torch.tensor(t["p"])) for t, _ in tokens]])
    s2 = torch.tensor([[t["s2"] for t, _ in tokens]])
    s3 = torch.tensor([[t["s3"] for t, _ in tokens]])
    adv = torch.tensor([[a for _, a in tokens]])
    torch.testing.assert_close(fisher_score(adv, logp, s2, s3), torch.tensor([[0.5, 0.125, 0.0, 1.125]]))
    mask = torch.ones(1, 4)
    kw = dict(advantages=adv, old_logp=logp, sum_pi_squared=s2, sum_pi_cubed=s3)
    assert capo(mask, **kw, reject_frac=0.25).tolist() == [[1.0, 1.0, 1.0, 0.0]]  # ⌊0.25·4⌋ = 1 token
    assert capo(mask, **kw, reject_frac=0.5).tolist() == [[0.0, 1.0, 1.0, 0.0]]
    assert capo(mask, **kw, reject_frac=0.2).tolist() == [[1.0] * 4]  # ⌊0.8⌋ = 0: nothing rejected
    # a masked token is never kept and never counted in the budget
    masked = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert capo(masked, **kw, reject_frac=0.34).tolist() == [[0.0, 1.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="needs the keyword tensor"):
        capo(mask, advantages=adv)
