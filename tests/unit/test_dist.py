"""trainers/dist.py alone (one process) and the per-completion sampler of rollout/hf.py."""

import math

import pytest
import torch

from unipo import config
from unipo.config import ConfigError
from unipo.rollout.hf import draw
from unipo.trainers.checks import check_data_parallel
from unipo.trainers.dist import World, sample_generators


def test_draw_with_per_row_generators_follows_the_distribution():
    probs = torch.tensor([0.2, 0.0, 0.5, 0.3]).repeat(6000, 1)
    tokens = draw(probs, sample_generators(0, list(range(6000)), [1] * 6000))
    freq = torch.bincount(tokens, minlength=4).float() / 6000
    assert freq[1] == 0  # a zero-probability token is never drawn
    # binomial standard error at n=6000 is <= 0.0065: 4 sigma
    torch.testing.assert_close(freq, torch.tensor([0.2, 0.0, 0.5, 0.3]), atol=0.026, rtol=0)


def test_a_completions_draws_do_not_depend_on_its_batch():
    probs = torch.softmax(torch.randn(5, 50, generator=torch.Generator().manual_seed(1)), -1)
    together = draw(probs, sample_generators(7, [10, 11], [3, 2]))
    apart = torch.cat(
        [draw(probs[:3], sample_generators(7, [10], [3])), draw(probs[3:], sample_generators(7, [11], [2]))]
    )
    assert torch.equal(together, apart)
    # another seed, another prompt position or another index in the group: other draws
    first = [torch.rand((), generator=g) for g in sample_generators(7, [10, 11], [3, 2])]
    assert len(set(map(float, first))) == 5
    assert float(torch.rand((), generator=sample_generators(8, [10], [1])[0])) != float(first[0])


def test_a_finished_row_draws_nothing_so_its_generator_goes_on_as_alone():
    # a multi-turn episode's generator samples its next turn after the batch's longest reply of this turn: the rows
    # that ended earlier must not have used it meanwhile, or its next turn depends on the rest of its batch
    probs = torch.softmax(torch.randn(2, 50, generator=torch.Generator().manual_seed(1)), -1)
    batch, alone = sample_generators(7, [10, 11], [1, 1]), sample_generators(7, [10], [1])
    first = draw(probs, batch)
    assert int(first[0]) == int(draw(probs[:1], alone)[0])
    for _ in range(3):  # row 0 has ended; row 1 goes on
        draw(probs, batch, done=torch.tensor([True, False]))
    assert float(torch.rand((), generator=batch[0])) == float(torch.rand((), generator=alone[0]))
    assert float(torch.rand((), generator=batch[1])) != float(torch.rand((), generator=alone[0]))


def test_one_rank_world_is_the_identity():
    w = World()
    x = torch.arange(6).view(3, 2)
    assert w.main and w.share([1, 2, 3]) == [1, 2, 3] and w.gather_rows(x) is x
    assert w.gather_inputs({"a": x, "b": [1, 2, 3], "c": 0.5}, 3) == {"a": x, "b": [1, 2, 3], "c": 0.5}
    assert torch.equal(w.local(x, 3, 1), x[:, :1]) and w.sizes(4) == [4]
    assert World(1, 2).share([1, 2, 3, 4]) == [3, 4]


def test_ray_on_several_ranks_needs_one_shared_cluster():
    with pytest.raises(ConfigError, match=r"^dist.ray: on several ranks, start one Ray cluster"):
        check_data_parallel(config.load("grpo", ["dist.ray=true"]))
    check_data_parallel(config.load("grpo", ["dist.ray=true", "dist.ray_address=auto"]))
    assert World().ratio(3, 4) == 0.75 and math.isnan(World().ratio(0, 0))


def test_a_plain_world_neither_shards_nor_pads():
    world, model = World(), torch.nn.Linear(2, 2)
    assert world.shard(model) is model and not hasattr(model, "unipo_forward")
    assert world.padding(3) == 0 and world.full_weights(model) is None
    optimizer = torch.optim.AdamW(model.parameters())
    assert world.optimizer_state(model, optimizer) == optimizer.state_dict()
