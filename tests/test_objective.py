"""Free bits, schedules and latent dropout against hand computations."""

import math

import pytest
import torch

from gptvae.config import ObjectiveConfig
from gptvae.latents import DiagonalGaussian
from gptvae.objective import beta_at, beta_settled, free_bits_kl, latent_dropout_mask, upstream_kl_term

# two sequences, three latent dims: KL values chosen so that each floor bites somewhere
KL = torch.tensor([[0.02, 0.30, 1.00],
                   [0.10, 0.05, 2.00]])


def test_kl_per_dim_closed_form():
    mu = torch.tensor([[0.0, 1.0, -2.0]])
    logvar = torch.tensor([[0.0, math.log(4.0), math.log(0.25)]])
    expected = [0.0, 0.5 * (4 + 1 - math.log(4) - 1), 0.5 * (0.25 + 4 - math.log(0.25) - 1)]
    torch.testing.assert_close(DiagonalGaussian(mu, logvar).kl(), torch.tensor([expected]))


def test_per_dim_free_bits_by_hand():
    # sum over x and d of max(KL_d(x), 0.1)
    hand = (0.10 + 0.30 + 1.00) + (0.10 + 0.10 + 2.00)
    assert free_bits_kl(KL, floor=0.1, mode="per_dim").item() == pytest.approx(hand)
    # upstream's hinge: mean over x of sum_d relu(KL_d - 0.1)
    hinge = ((0 + 0.2 + 0.9) + (0 + 0 + 1.9)) / 2
    assert upstream_kl_term(KL, floor=0.1, mode="per_dim").item() == pytest.approx(hinge)


def test_batch_dim_free_bits_by_hand():
    # batch means per dim: 0.06, 0.175, 1.5; floored at 0.2: 0.2, 0.2, 1.5; charged for both sequences
    hand = 2 * (0.2 + 0.2 + 1.5)
    assert free_bits_kl(KL, floor=0.2, mode="batch_dim").item() == pytest.approx(hand)


def test_total_free_bits_by_hand():
    # per-sequence totals 1.32 and 2.15; floor 2.0 lifts only the first
    assert free_bits_kl(KL, floor=2.0, mode="total").item() == pytest.approx(2.0 + 2.15)


def test_zero_floor_is_the_plain_kl_in_every_mode():
    for mode in ("per_dim", "batch_dim", "total"):
        assert free_bits_kl(KL, floor=0.0, mode=mode).item() == pytest.approx(KL.sum().item())


def test_floor_stops_the_gradient_below_it():
    kl = KL.clone().requires_grad_()
    free_bits_kl(kl, floor=0.1, mode="per_dim").backward()
    assert kl.grad.tolist() == [[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]


@pytest.mark.parametrize("config,step,total,expected", [
    (ObjectiveConfig(beta=0.7), 123, 1000, 0.7),
    # linear: beta0 + (beta - beta0) * min(1, t / W)
    (ObjectiveConfig(beta=1.0, schedule="linear", beta_start=0.1, warmup_steps=100), 0, 1000, 0.1),
    (ObjectiveConfig(beta=1.0, schedule="linear", beta_start=0.1, warmup_steps=100), 50, 1000, 0.55),
    (ObjectiveConfig(beta=1.0, schedule="linear", beta_start=0.1, warmup_steps=100), 400, 1000, 1.0),
    # linear with warmup_steps = 0: the rise takes ramp_fraction of training
    (ObjectiveConfig(beta=1.0, schedule="linear", ramp_fraction=0.25), 125, 1000, 0.5),
    (ObjectiveConfig(beta=1.0, schedule="linear", ramp_fraction=0.25), 250, 1000, 1.0),
    # cyclical, M = 4 cycles of 250 steps, rising over R = 0.5 of each: beta * min(1, tau / R)
    (ObjectiveConfig(beta=1.0, schedule="cyclical", cycles=4, cycle_ratio=0.5), 0, 1000, 0.0),
    (ObjectiveConfig(beta=1.0, schedule="cyclical", cycles=4, cycle_ratio=0.5), 62, 1000, 62 / 125),
    (ObjectiveConfig(beta=1.0, schedule="cyclical", cycles=4, cycle_ratio=0.5), 200, 1000, 1.0),
    (ObjectiveConfig(beta=1.0, schedule="cyclical", cycles=4, cycle_ratio=0.5), 250, 1000, 0.0),
    (ObjectiveConfig(beta=1.0, schedule="cyclical", cycles=4, cycle_ratio=0.5), 300, 1000, 0.4),
    # zero_linear: 0 for the first 25%, then linear over the next 25%, then constant
    (ObjectiveConfig(beta=2.0, schedule="zero_linear", zero_fraction=0.25, ramp_fraction=0.25), 249, 1000, 0.0),
    (ObjectiveConfig(beta=2.0, schedule="zero_linear", zero_fraction=0.25, ramp_fraction=0.25), 375, 1000, 1.0),
    (ObjectiveConfig(beta=2.0, schedule="zero_linear", zero_fraction=0.25, ramp_fraction=0.25), 900, 1000, 2.0),
])
def test_schedules_follow_their_formulas(config, step, total, expected):
    assert beta_at(config, step, total) == pytest.approx(expected)


@pytest.mark.parametrize("config,total", [
    (ObjectiveConfig(), 1000),
    (ObjectiveConfig(schedule="linear", warmup_steps=100), 1000),
    (ObjectiveConfig(schedule="linear", ramp_fraction=0.3), 1000),
    (ObjectiveConfig(schedule="cyclical", cycles=4, cycle_ratio=0.5), 1000),
    (ObjectiveConfig(schedule="cyclical", cycles=3, cycle_ratio=0.7), 1000),
    (ObjectiveConfig(schedule="zero_linear", zero_fraction=0.2, ramp_fraction=0.3), 1000),
])
def test_beta_settles_where_the_schedule_stops_moving(config, total):
    """From beta_settled on, beta is constant at its final value; the step before, it was not (or it is 0)."""
    settled = beta_settled(config, total)
    assert all(beta_at(config, t, total) == pytest.approx(config.beta) for t in range(settled, total))
    if settled > 0:
        assert beta_at(config, settled - 1, total) < config.beta


def test_latent_dropout_rate_and_upstream_rng_use():
    torch.manual_seed(0)
    drop = latent_dropout_mask(100_000, 0.25, "cpu")
    assert drop.float().mean().item() == pytest.approx(0.25, abs=0.01)
    # the same RNG state drops the same sequences as upstream's nn.Dropout on a vector of ones
    torch.manual_seed(1)
    ours = latent_dropout_mask(64, 0.5, "cpu")
    torch.manual_seed(1)
    upstream = ~torch.nn.Dropout(0.5)(torch.ones(64)).bool()
    assert torch.equal(ours, upstream)


@pytest.mark.parametrize("change,message", [
    (dict(free_bits=-0.1), "free_bits=-0.1"),
    (dict(free_bits_mode="per_word"), "allowed: per_dim, batch_dim, total, per_token"),
    (dict(schedule="sigmoid"), "allowed: constant, linear, cyclical, zero_linear"),
    (dict(latent_dropout=1.0), "latent_dropout=1.0"),
    (dict(scale="mean"), "allowed: elbo, upstream"),
    (dict(beta=-1.0), "beta=-1.0"),
])
def test_bad_objective_config_is_one_clear_error(change, message):
    with pytest.raises(ValueError, match=message):
        ObjectiveConfig(**change).validate()
