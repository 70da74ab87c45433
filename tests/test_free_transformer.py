"""The Free Transformer family reads upstream's FreeTransformer correctly, and its discrete latent's
measures are exact: parity with upstream's loss and gradients, KL / log q / MI / IW-NLL against brute-force
enumeration of every code on tiny cases, padding, generation."""

import itertools
import math

import pytest
import torch
from x_transformers.free_transformer import FreeTransformer as Upstream

from gptvae.config import ConfigError, ModelConfig, ObjectiveConfig, apply_overrides, preset
from gptvae.data import BOS, EOS, PAD
from gptvae.families.freetransformer import Model
from gptvae.latents import NO_LATENT, TokenBits, UniformBits
from gptvae.metrics import (active_units, importance_weighted_nll, log_likelihood_samples, mutual_information_repeated,
                            posterior_mean_variance)
from gptvae.objective import objective

V = 20
SMALL = dict(kind="freetransformer", dim=32, depth=2, enc_depth=1, heads=2, attn_dim_head=16, max_seq_len=32,
             latent_bits=3)


def model(**change):
    torch.manual_seed(0)
    return Model(ModelConfig(**{**SMALL, **change}), num_tokens=V)


def sequences(batch=5, length=9, lengths=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(4, V, (batch, length), generator=g)
    x[:, 0] = BOS
    for i, n in enumerate(lengths or [length] * batch):
        x[i, n - 1] = EOS
        x[i, n:] = PAD
    return x


def upstream_twin(ours, *, kappa, weight):
    c = ours.config
    twin = Upstream(num_tokens=V, dim=c.dim, dec_head_depth=c.depth // 2, dec_tail_depth=c.depth - c.depth // 2,
                    max_seq_len=c.max_seq_len, enc_depth=c.enc_depth, attn_dim_head=c.attn_dim_head, heads=c.heads,
                    latent_bits=c.latent_bits, kl_loss_threshold=kappa, kl_loss_weight=weight, pad_id=PAD)
    twin.load_state_dict(ours.net.state_dict())
    return twin


@pytest.mark.parametrize("kappa,weight", [(0.0, 1.0), (0.3, 0.5), (2.5, 2.0)])
def test_upstream_scale_reproduces_the_free_transformers_loss_and_gradients(kappa, weight):
    ours = model()
    twin = upstream_twin(ours, kappa=kappa, weight=weight)
    x = sequences()   # no padding: there upstream's latents and ours are the same positions
    config = ObjectiveConfig(beta=weight, free_bits=kappa, free_bits_mode="per_token", scale="upstream")
    for seed in range(3):
        ours.zero_grad(), twin.zero_grad()
        torch.manual_seed(seed)
        expected, (ar_loss, kl_loss) = twin(x, return_all_losses=True)
        expected.backward()
        torch.manual_seed(seed)
        terms = objective(ours, x, config)
        terms.loss.backward()
        assert terms.loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
        assert (terms.rec / terms.tokens).item() == pytest.approx(ar_loss.item(), rel=1e-5)
        theirs = dict(twin.named_parameters())
        for name, p in ours.net.named_parameters():
            if p.grad is not None or theirs[name].grad is not None:
                torch.testing.assert_close(p.grad, theirs[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_elbo_scale_is_minus_elbo_per_token_and_kappa_is_per_position():
    ours = model()
    x = sequences(lengths=[9, 7, 9, 4, 6])
    torch.manual_seed(1)
    terms = objective(ours, x, ObjectiveConfig(free_bits_mode="per_token"))
    posterior = ours.posterior(x)
    kl = posterior.kl().sum((-1, -2))
    torch.manual_seed(1)
    codes_one_hot = posterior.rsample()
    log_lik = ours.log_likelihood(x, codes_one_hot)
    assert terms.tokens == int((x[:, 1:] != PAD).sum()) == int(posterior.present.sum())
    assert terms.loss.item() == pytest.approx(((-log_lik + kl).sum() / terms.tokens).item(), rel=1e-5)
    # a floor above every position's KL charges kappa at each position that carries a latent, and only there
    kappa_bits = 3.0   # = H bits: no position's KL can exceed H log 2
    floored = objective(ours, x, ObjectiveConfig(free_bits=kappa_bits, free_bits_unit="bits", free_bits_mode="per_token"))
    assert floored.kl_floored.item() == pytest.approx(terms.tokens * 3 * math.log(2), rel=1e-6)


def test_a_sequences_latent_and_likelihood_do_not_depend_on_its_batch():
    ours = model()
    x = sequences(lengths=[9, 7, 9, 4, 6])
    q = ours.posterior(x)
    codes = q.sample(1, generator=torch.Generator().manual_seed(0))[0]
    with torch.no_grad():
        batched = ours.log_likelihood(x, codes)
        for i in range(len(x)):
            n = int((x[i] != PAD).sum())
            alone = ours.posterior(x[i:i + 1, :n])
            torch.testing.assert_close(alone.logits[0], q.logits[i, :n - 1], atol=1e-5, rtol=1e-5)
            assert ours.log_likelihood(x[i:i + 1, :n], codes[i:i + 1, :n - 1]).item() == pytest.approx(batched[i].item(), abs=1e-4)
    assert (codes[~q.present] == NO_LATENT).all() and (codes[q.present] >= 0).all()


def all_codes(positions, bits):
    return torch.tensor(list(itertools.product(range(2 ** bits), repeat=positions)))   # (C^T, T)


def test_log_prob_kl_and_entropy_are_exact_by_enumeration():
    torch.manual_seed(0)
    q = TokenBits(torch.randn(3, 2, 2) * 2, torch.tensor([[True, True], [True, False], [True, True]]))
    prior = UniformBits(2)
    for row in range(3):
        t = int(q.present[row].sum())
        z = all_codes(t, 2)
        z = torch.cat([z, torch.full((len(z), 2 - t), NO_LATENT)], dim=1)
        log_q = q[row:row + 1].log_prob(z[:, None])[:, 0]
        log_p = prior.log_prob(z[:, None])[:, 0]
        assert log_q.exp().sum().item() == pytest.approx(1.0, abs=1e-6)          # a distribution over the codes
        assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
        kl = (log_q.exp() * (log_q - log_p)).sum()
        assert q.kl()[row].sum().item() == pytest.approx(kl.item(), abs=1e-5)
        assert q.entropy()[row].item() == pytest.approx(-(log_q.exp() * log_q).sum().item(), abs=1e-5)
    # sampling follows the bit probabilities, bit h of a code being (code >> h) & 1
    draws = q.sample(20_000, generator=torch.Generator().manual_seed(0))
    bit1 = ((draws[:, 0, 0] >> 1) & 1).double().mean()
    assert bit1.item() == pytest.approx(q.probs[0, 0, 1].item(), abs=0.015)


def test_mutual_information_matches_enumeration_and_needs_one_length():
    """Under the empirical q(x), I = mean_i KL(q(z|x_i) || 1/N sum_j q(z|x_j)): exact by enumerating every
    code; the estimator is unbiased for it, so its mean over many draws of z lands on it."""
    torch.manual_seed(0)
    q = TokenBits(torch.randn(6, 2, 2) * 2, torch.ones(6, 2, dtype=torch.bool))
    z = all_codes(2, 2)                                                    # (16, 2)
    log_q = q.log_prob(z[:, None].expand(-1, 6, -1))                       # (16, 6)
    log_mix = torch.logsumexp(log_q, dim=1) - math.log(6)
    exact = (log_q.exp() * (log_q - log_mix[:, None])).sum(0).mean().item()
    torch.testing.assert_close(q.cross_log_prob(z), log_q.double().to(q.logits.dtype), atol=1e-5, rtol=1e-5)
    mean, noise = mutual_information_repeated(q, 4_000, generator=torch.Generator().manual_seed(0))
    assert mean == pytest.approx(exact, abs=4 * noise / math.sqrt(4_000))
    ragged = TokenBits(q.logits, q.present.clone().index_put_((torch.tensor([0]), torch.tensor([1])), torch.tensor(False)))
    with pytest.raises(ValueError, match="same length"):
        ragged.cross_log_prob(z)


def test_iw_nll_brackets_the_exact_likelihood_by_enumeration():
    ours = model(latent_bits=1)
    ours.eval()
    x = sequences(batch=2, length=5, seed=3)   # 4 positions of 1 bit: 16 latent codes, enumerable
    with torch.no_grad():
        z = all_codes(4, 1)
        ll = torch.stack([ours.log_likelihood(x, zi.expand(2, -1)) for zi in z]).double()   # (16, B)
        exact = -(torch.logsumexp(ll + ours.prior.log_prob(z[:, None].expand(-1, 2, -1)).double(), 0))
        iw = importance_weighted_nll(ours, x, 4_000, generator=torch.Generator().manual_seed(0))
        one = importance_weighted_nll(ours, x, 1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(iw, exact, atol=1e-2, rtol=0)   # an untrained encoder: K = 4,000 gets within 0.01
    assert (one.mean() > exact.mean() - 0.1).item()   # a one-sample ELBO sits above -log p(x) on average


@pytest.mark.parametrize("change", [{}, {"head_depth": 0}, {"per_token_latents": False}])
def test_samples_share_the_head_and_equal_one_pass_per_pair(change):
    ours = model(**change).eval()
    x = sequences(batch=3, length=8, lengths=[8, 5, 3], seed=4)
    with torch.no_grad():
        q = ours.posterior(x)
        z = q.sample(4, generator=torch.Generator().manual_seed(1))               # (S, B, T), NO_LATENT past the ends
        shared = ours.log_likelihood_samples(x, z)
        one_by_one = torch.stack([ours.log_likelihood(x, zs) for zs in z])
        chunked = log_likelihood_samples(ours, x, z, chunk_size=5)             # the metrics' path, split into chunks
    torch.testing.assert_close(shared, one_by_one, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked, one_by_one.double(), atol=1e-5, rtol=1e-5)


def test_active_bits_count_units_whose_probability_moves_across_sequences():
    probs = torch.tensor([[0.5, 0.9], [0.5, 0.1], [0.5, 0.5]])   # unit 0 never moves; unit 1 does
    q = TokenBits(torch.logit(probs)[:, None, :], torch.ones(3, 1, dtype=torch.bool))
    assert active_units(q.mean) == 1
    ragged = TokenBits(torch.zeros(3, 2, 1), torch.tensor([[True, True], [True, False], [True, False]]))
    assert posterior_mean_variance(ragged.mean).tolist() == [0.0, 0.0]   # a unit one row has: no variance


def test_generation_draws_per_position_latents_or_conditions_on_given_ones():
    ours = model()
    prompts = torch.full((3, 1), BOS)
    z = torch.tensor([5, 1, 0, 7, 2, 3, 6, 4, 1, 1, 0])
    a = ours.generate(prompts, max_new_tokens=10, z=z, temperature=0.0)
    b = ours.generate(prompts, max_new_tokens=10, z=z.expand(3, -1), temperature=0.0)
    assert torch.equal(a, b) and a.shape == (3, 10) and (a[0] == a[1]).all()
    assert ours.generate(prompts, max_new_tokens=6, prior=True).shape == (3, 6)
    assert ours.generate(prompts, max_new_tokens=6, reference=sequences(batch=3)).shape == (3, 6)
    assert ours.generate(prompts, max_new_tokens=6).shape == (3, 6)
    codes = ours.latents(2000, 4, prior=True, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2000, 4) and codes.min() >= 0 and codes.max() < 8
    assert codes.float().std(0).min().item() > 2.0   # a fresh uniform code at every position
    with pytest.raises(ValueError, match="at most one"):
        ours.generate(prompts, max_new_tokens=5, z=z, prior=True)


@pytest.mark.parametrize("change,message", [
    ({"model.kind": "freetransformer", "objective.free_bits_mode": "per_dim"}, "per_token, total for model.kind=freetransformer"),
    ({"objective.free_bits_mode": "per_token"}, "per_dim, batch_dim, total for model.kind=vae"),
    ({"model.kind": "freetransformer", "objective.free_bits_mode": "per_token", "model.head_depth": 3}, "head_depth=3"),
    ({"model.latent_bits": 17}, "latent_bits=17"),
    ({"objective.free_bits_unit": "bytes"}, "allowed: nats, bits"),
])
def test_bad_free_transformer_config_is_one_clear_error(change, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(preset("smoke"), change).validate()


@pytest.mark.parametrize("change", [{}, {"head_depth": 0}, {"per_token_latents": False}])
def test_kv_cached_generation_equals_rerunning_every_prefix(change):
    ours = model(**change)
    prompts = torch.full((4, 1), BOS)
    for given in (dict(prior=True), dict(z=torch.tensor([5, 1, 0, 7, 2, 3, 6, 4, 1, 1, 0, 2, 3])), {}):
        runs = [ours.generate(prompts, max_new_tokens=12, temperature=0.0, use_cache=cache,
                              generator=torch.Generator().manual_seed(1), **given) for cache in (True, False)]
        assert torch.equal(*runs), given
