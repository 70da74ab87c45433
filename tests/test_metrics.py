"""gptvae.metrics against closed-form answers (REFERENCE.md section 3).

The reference model is linear-Gaussian:  p(z) = N(0, I_D),  p(x|z) = N(Wz + b, s^2 I_P), with
W = Q diag(sigma) (Q has orthonormal columns), so that everything is known exactly:

    p(x)            = N(b, W W^T + s^2 I)
    p(z|x)          = N(M^-1 W^T (x - b) / s^2, M^-1),   M = I + W^T W / s^2 = diag(1 + sigma^2 / s^2)
    Var_x(mu_d(x))  = sigma_d^2 / (sigma_d^2 + s^2)
    I(x; z)         = 1/2 log det M                     (q = the exact posterior)

M is diagonal, so the exact posterior IS a diagonal Gaussian and the model fits the protocol exactly.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from gptvae.latents import DiagonalGaussian, StandardNormal
from gptvae.metrics import (
    active_units,
    evaluate,
    evaluate_split,
    importance_weighted_estimate,
    importance_weighted_nll,
    iw_nll_curve,
    minibatch_mutual_information,
    mutual_information,
    mutual_information_repeated,
    unit_mutual_information,
    perplexity,
    posterior_mean_variance,
    posteriors,
)

F64 = torch.float64


class LinearGaussian:
    """The linear-Gaussian latent model; `posterior` is exact unless shifted / rescaled."""

    def __init__(self, sigma2, *, obs_dim=10, s=1.0, seed=0, mean_shift=0.0, var_scale=1.0):
        g = torch.Generator().manual_seed(seed)
        self.sigma2 = torch.as_tensor(sigma2, dtype=F64)
        self.D, self.P, self.s = len(self.sigma2), obs_dim, s
        q, _ = torch.linalg.qr(torch.randn(obs_dim, self.D, generator=g, dtype=F64))
        self.W = q * self.sigma2.sqrt()                              # (P, D), orthogonal columns
        self.b = torch.randn(obs_dim, generator=g, dtype=F64)
        self.post_var = 1.0 / (1.0 + self.sigma2 / s**2)             # diag(M^-1)
        self.mean_shift, self.var_scale = mean_shift, var_scale
        self.prior = StandardNormal(self.D)

    def sample(self, n, *, seed):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.D, generator=g, dtype=F64)
        return z @ self.W.T + self.b + self.s * torch.randn(n, self.P, generator=g, dtype=F64)

    # the protocol

    def posterior(self, x):
        mu = self.post_var * ((x - self.b) @ self.W) / self.s**2 + self.mean_shift
        logvar = (self.post_var * self.var_scale).log().expand_as(mu)
        return DiagonalGaussian(mu, logvar)

    def log_likelihood(self, x, z):
        mean = z.to(F64) @ self.W.T + self.b
        return DiagonalGaussian(mean, torch.full_like(mean, 2 * math.log(self.s))).log_prob(x)

    # closed forms

    def log_marginal(self, x):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(self.P, dtype=F64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    @property
    def mutual_information(self):
        return 0.5 * torch.log1p(self.sigma2 / self.s**2).sum().item()

    @property
    def mean_variance(self):
        return self.sigma2 / (self.sigma2 + self.s**2)


def flipped_iw_nll(model, x, num_samples, *, generator):
    """The AdaVAE bug: prior and posterior terms with swapped signs in the importance weight."""
    q = model.posterior(x)
    z = q.sample(num_samples, generator=generator)
    log_w = torch.stack([model.log_likelihood(x, zk) - model.prior.log_prob(zk) + q.log_prob(zk) for zk in z])
    return -(torch.logsumexp(log_w, 0) - math.log(num_samples))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# importance-weighted NLL

@pytest.mark.parametrize("num_samples", [1, 50])
def test_iw_nll_exact_posterior_is_exact(num_samples):
    # with q = p(z|x) every weight equals p(x): the estimate is exact for any K
    model = LinearGaussian([2.0, 1.0, 0.3, 0.05])
    x = model.sample(64, seed=1)
    iw = importance_weighted_nll(model, x, num_samples, generator=gen())
    assert iw.shape == (64,)
    torch.testing.assert_close(iw, -model.log_marginal(x), rtol=0, atol=1e-5)


def test_effective_sample_size_is_k_for_the_exact_posterior_and_near_1_for_a_far_one():
    model = LinearGaussian([2.0, 1.0, 0.3, 0.05])
    x = model.sample(64, seed=1)
    _, ess = importance_weighted_estimate(model, x, model.posterior(x), 50, chunk_size=640, generator=gen())
    torch.testing.assert_close(ess, torch.full_like(ess, 50.0), rtol=1e-9, atol=0)   # every weight is p(x)
    far = LinearGaussian([2.0, 1.0, 0.3, 0.05], var_scale=100.0)   # far too wide: one sample in K lands
    _, ess = importance_weighted_estimate(far, x, far.posterior(x), 50, generator=gen())
    assert ess.median() < 1.5 and (ess >= 1 - 1e-9).all()


def test_iw_nll_signs_flipped_would_fail():
    # documents the bug REFERENCE section 5 warns about: flipped terms are off by nats, ours is exact
    model = LinearGaussian([2.0, 1.0, 0.3, 0.05])
    x = model.sample(64, seed=1)
    exact = -model.log_marginal(x)
    ours = importance_weighted_nll(model, x, 10, generator=gen(3))
    flipped = flipped_iw_nll(model, x, 10, generator=gen(3))
    assert (ours - exact).abs().max() < 1e-6
    assert (flipped - exact).abs().mean() > 1.0


def test_iw_nll_perturbed_posterior_gap_shrinks_with_k():
    model = LinearGaussian([2.0, 1.0, 0.3, 0.05], mean_shift=0.4, var_scale=2.0)
    x = model.sample(200, seed=2)
    exact = -model.log_marginal(x)

    gaps = {k: (importance_weighted_nll(model, x, k, chunk_size=20_000, generator=gen(k)) - exact).mean().item()
            for k in (1, 10, 100, 1000)}
    # K = 1 is -ELBO: the gap is the mean KL(q || p(z|x)), clearly positive
    assert gaps[1] > 0.3
    assert gaps[1] > gaps[10] > gaps[100] > gaps[1000] >= 0.0
    assert gaps[1000] < 0.02


def test_iw_nll_chunking_changes_nothing():
    model = LinearGaussian([2.0, 1.0, 0.3, 0.05], mean_shift=0.4, var_scale=0.5)
    x = model.sample(50, seed=4)
    reference = importance_weighted_nll(model, x, 37, generator=gen(7))
    for chunk_size in (1, 7, 50, 120, 10_000):  # below, at and above the batch size
        chunked = importance_weighted_nll(model, x, 37, chunk_size=chunk_size, generator=gen(7))
        torch.testing.assert_close(chunked, reference, rtol=0, atol=1e-6)


def test_iw_nll_float32_model():
    # the weights are computed in float64 from the very z the model saw, even for a float32 model
    class Float32(LinearGaussian):
        def posterior(self, x):
            return super().posterior(x).to(torch.float32)

        def log_likelihood(self, x, z):
            return super().log_likelihood(x, z).float()

    model = Float32([2.0, 1.0, 0.3, 0.05])
    x = model.sample(64, seed=1)
    iw = importance_weighted_nll(model, x, 20, generator=gen())
    assert iw.dtype == F64
    torch.testing.assert_close(iw, -model.log_marginal(x), rtol=0, atol=1e-3)


# mutual information

def test_mi_converges_to_closed_form():
    model = LinearGaussian([2.0] * 8)  # I(x; z) = 4 log 3 = 4.39 nats
    exact = model.mutual_information
    errors = {}
    for n in (300, 10_000):
        estimate = mutual_information(model.posterior(model.sample(n, seed=n)), generator=gen(n))
        assert estimate <= math.log(n)
        errors[n] = abs(estimate - exact)
    # measured: 4.07 at N = 300 (a known downward bias), 4.34 at N = 10,000
    assert errors[10_000] < 0.1
    assert errors[10_000] < errors[300]


def test_mi_low_information_dims():
    model = LinearGaussian([1.0, 1.0, 0.25, 0.05])  # 0.83 nats
    q = model.posterior(model.sample(10_000, seed=0))
    assert mutual_information(q, generator=gen()) == pytest.approx(model.mutual_information, abs=0.05)


def test_mi_saturates_near_log_n():
    # 64 informative dims carry ~22 nats, far above log N: the estimate saturates at log N. The bound is
    # not strict: E_q[log q] replaces log q(z_i|x_i), whose mean over N rows has std sqrt(D / 2N)
    model = LinearGaussian([2.0] * 64, obs_dim=80)
    n = 300
    estimate = mutual_information(model.posterior(model.sample(n, seed=0)), generator=gen())
    slack = 4 * math.sqrt(64 / (2 * n))
    assert math.log(n) - 0.5 < estimate < math.log(n) + slack


def test_a_saturated_mi_is_flagged_and_a_resolved_one_is_not():
    """Closed forms on both sides of the ceiling: 22 nats at N = 300 (log N = 5.7) is flagged, and its estimate
    reads as a lower bound; 4.39 nats at N = 10,000 (log N = 9.2), estimated within 0.1, is not."""
    from gptvae.catalog import mi_at_ceiling

    saturated = LinearGaussian([2.0] * 64, obs_dim=80)
    estimate = mutual_information(saturated.posterior(saturated.sample(300, seed=0)), generator=gen())
    assert mi_at_ceiling(estimate, math.log(300)) and estimate < saturated.mutual_information
    resolved = LinearGaussian([2.0] * 8)
    estimate = mutual_information(resolved.posterior(resolved.sample(10_000, seed=1)), generator=gen())
    assert not mi_at_ceiling(estimate, math.log(10_000))
    assert not mi_at_ceiling(math.nan, math.log(300))


def test_mi_matches_direct_formula():
    # the matmul expansion against the REFERENCE formula written out naively, with tiny variances too
    g = gen(5)
    n, d = 200, 6
    mu = torch.randn(n, d, generator=g, dtype=F64)
    logvar = torch.empty(n, d, dtype=F64).uniform_(-9.0, 1.0, generator=g)
    z = mu + torch.randn(n, d, generator=gen(6)).to(F64) * (0.5 * logvar).exp()
    var = logvar.exp()
    log_q = -0.5 * (math.log(2 * math.pi) + logvar[None] + (z[:, None] - mu[None]).square() / var[None]).sum(-1)  # (i, j)
    neg_entropy = -0.5 * (d * math.log(2 * math.pi) + (1 + logvar).sum(-1))
    direct = (neg_entropy.mean() - (torch.logsumexp(log_q, 1) - math.log(n)).mean()).item()
    assert mutual_information(DiagonalGaussian(mu, logvar), generator=gen(6)) == pytest.approx(direct, abs=1e-9)


def test_unit_mi_matches_each_units_closed_form():
    # independent units on orthogonal directions: I(x; z_u) = 1/2 log(1 + sigma2_u / s^2), summing to the joint MI
    model = LinearGaussian([2.0, 1.0, 0.25, 0.0])
    q = model.posterior(model.sample(5_000, seed=0))
    exact = 0.5 * torch.log1p(model.sigma2 / model.s**2)
    estimate = unit_mutual_information(q, generator=gen(1))
    assert estimate.shape == (4,)
    torch.testing.assert_close(estimate, exact, rtol=0, atol=0.06)
    assert abs(estimate[3].item()) < 0.02      # a unit that carries nothing


def test_unit_mi_matches_the_joint_estimator_on_one_unit():
    # one unit: the same formula (with the sampled log q(z_i|x_i)) written out by brute force
    g = gen(5)
    mu, logvar = torch.randn(300, 1, generator=g, dtype=F64), torch.full((300, 1), -1.0, dtype=F64)
    q = DiagonalGaussian(mu, logvar)
    z = q.sample(1, generator=gen(2))[0]
    log_q = -0.5 * (math.log(2 * math.pi) + logvar.T + (z - mu.T).square() / logvar.exp().T)   # (i, j)
    direct = (log_q.diagonal() - torch.logsumexp(log_q, 1) + math.log(300)).mean().item()
    assert unit_mutual_information(q, generator=gen(2)).item() == pytest.approx(direct, abs=1e-9)


def test_repeated_mi_reports_its_noise():
    model = LinearGaussian([1.0, 1.0, 0.25, 0.05])
    q = model.posterior(model.sample(2_000, seed=0))
    mean, noise = mutual_information_repeated(q, 6, generator=gen())
    assert 0 < noise < 0.1 and mean == pytest.approx(model.mutual_information, abs=0.08)
    assert math.isnan(mutual_information_repeated(q, 1, generator=gen())[1])


def test_minibatch_mi_depends_on_batch_size():
    model = LinearGaussian([2.0] * 8)
    q = model.posterior(model.sample(4096, seed=0))
    full = mutual_information(q, generator=gen())
    # one minibatch holding every row is the whole-set estimator, draw for draw
    assert minibatch_mutual_information(q, 4096, generator=gen()) == pytest.approx(full, abs=1e-12)
    small = minibatch_mutual_information(q, 32, generator=gen())
    assert small < math.log(32) + 0.3 < full


# active units

def test_active_units_match_closed_form():
    # Var(mu_d) = sigma^2 / (sigma^2 + 1): 0.80, 0.50, 0.20, 0.048 active; 0.002, 0.0005, 0 not
    sigma2 = [4.0, 1.0, 0.25, 0.05, 0.002, 0.0005, 0.0]
    model = LinearGaussian(sigma2)
    mu = model.posterior(model.sample(10_000, seed=0)).mean
    variance = posterior_mean_variance(mu)
    assert variance.shape == (7,)
    torch.testing.assert_close(variance, model.mean_variance, rtol=0.05, atol=1e-4)
    expected = int((model.mean_variance >= 0.01).sum())
    assert expected == 4
    assert active_units(mu) == expected
    assert active_units(mu, threshold=0.001) == 5


def test_posterior_mean_variance_is_unbiased():
    mu = torch.tensor([[0.0], [1.0]])
    assert posterior_mean_variance(mu).item() == pytest.approx(0.5)  # n - 1 = 1 in the denominator


# perplexity

def test_perplexity_arithmetic():
    assert perplexity(6 * math.log(3.0), 3) == pytest.approx(9.0)
    assert perplexity(torch.tensor(0.0), 10) == 1.0


def test_perplexity_ptb_denominator():
    # REFERENCE section 5: Texar's PTB VAE-LSTM, NLL 101.92 per sentence, 3,761 sentences,
    # 78,669 words + 3,761 EOS = 82,430 predicted tokens -> PPL 104.61
    sentences, words = 3761, 78_669
    assert perplexity(101.92 * sentences, words + sentences) == pytest.approx(104.61, abs=0.01)
    assert perplexity(101.92 * sentences, words) > 120  # without EOS the number is not comparable


# evaluate, on real Split objects

data = pytest.importorskip("gptvae.data")


def token_split(n=40, seed=0):
    """A small Split of BOS ... EOS sequences of varied length with a binary label."""
    g = gen(seed)
    lengths = torch.randint(1, 12, (n,), generator=g)
    seqs = [torch.cat([torch.tensor([data.BOS]), torch.randint(4, 20, (int(k),), generator=g), torch.tensor([data.EOS])])
            for k in lengths]
    labels = torch.tensor([int(s[1] < 12) for s in seqs])
    return data.Split(sequences=seqs, labels={"low": labels})


class TokenLinearGaussian(nn.Module):
    """LinearGaussian on a fixed feature of the token sequence: log p(x) is known exactly.

    log_likelihood(tokens, None) returns the exact marginal, standing in for the masked-latent LM path.
    """

    def __init__(self, sigma2, *, vocab=20, obs_dim=6):
        super().__init__()
        self.lg = LinearGaussian(sigma2, obs_dim=obs_dim, seed=1)
        self.prior = self.lg.prior
        self.embed = nn.Embedding(vocab, obs_dim, padding_idx=data.PAD)  # parameter: gives the device
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(vocab, obs_dim, generator=gen(2)))
            self.embed.weight[data.PAD].zero_()

    def features(self, tokens):
        return self.embed(tokens).to(F64).sum(1) / 2.0

    def posterior(self, tokens):
        return self.lg.posterior(self.features(tokens)).to(torch.float32)

    def log_likelihood(self, tokens, z):
        x = self.features(tokens)
        return self.lg.log_marginal(x) if z is None else self.lg.log_likelihood(x, z)


def test_evaluate_exact_token_model():
    split = token_split()
    model = TokenLinearGaussian([2.0, 0.5, 0.05, 0.001])
    model.train()
    out = evaluate(model, split, iw_samples=3, mc_samples=400, max_tokens=64, iw_chunk_size=50, seed=0)
    assert model.training  # mode restored

    exact = -model.log_likelihood(torch.nn.utils.rnn.pad_sequence(split.sequences, batch_first=True), None)
    assert out["n_sequences"] == len(split)
    assert out["n_tokens"] == split.num_tokens == int(split.lengths.sum()) - len(split)
    # exact posterior (up to the float32 posterior): IW-NLL is exact whatever K
    assert out["iw_nll"] == pytest.approx(exact.mean().item(), abs=1e-4)
    assert out["lm_nll"] == pytest.approx(exact.mean().item(), abs=1e-9)
    assert out["ppl"] == pytest.approx(math.exp(exact.sum().item() / split.num_tokens), rel=1e-5)
    # and -ELBO = -log p(x) + KL(q || p(z|x)) = -log p(x) in expectation: MC with 400 samples
    assert out["neg_elbo"] == pytest.approx(out["iw_nll"], abs=0.05)
    assert out["neg_elbo"] == pytest.approx(out["rec"] + out["kl"], abs=1e-9)
    assert out["nll_bound_per_token"] == pytest.approx(out["neg_elbo"] * len(split) / split.num_tokens)
    assert out["au"] == active_units(posteriors(model, split).mean)


def test_k_sweep_is_exact_at_every_k_with_the_exact_posterior():
    split = token_split()
    model = TokenLinearGaussian([2.0, 0.5, 0.05, 0.001])
    curve = iw_nll_curve(model, split, [1, 3, 30], max_tokens=64, seed=0)
    exact = -model.log_likelihood(torch.nn.utils.rnn.pad_sequence(split.sequences, batch_first=True), None)
    assert list(curve.K) == [1, 3, 30] and curve.n_tokens.iloc[0] == split.num_tokens
    for value in curve.iw_nll:
        assert value == pytest.approx(exact.mean().item(), abs=1e-4)


def test_k_sweep_nests_the_samples_of_the_iw_estimator():
    """The estimate at K uses the first K of the same draws IW-NLL at K would use: equal, draw for draw."""
    split = token_split(20)
    model = TokenLinearGaussian([2.0, 0.5, 0.05, 0.001])
    model.lg.mean_shift, model.lg.var_scale = 0.5, 3.0          # a wrong posterior: the bound is loose
    curve = iw_nll_curve(model, split, [1, 8, 200], max_tokens=10_000, seed=5).set_index("K").iw_nll
    x = data.collate(split, torch.arange(len(split)))
    order = data.batch_plan(split.lengths, max_tokens=10_000, shuffle=False)[0]
    for k in (1, 8, 200):
        iw = importance_weighted_nll(model, data.collate(split, order), k, generator=gen(5))
        assert curve[k] == pytest.approx(iw.mean().item(), rel=1e-9), k
    exact = -model.log_likelihood(x, None).mean().item()
    assert curve[1] > curve[8] > curve[200] > exact - 1e-6


def tiny_models():
    from gptvae.config import ModelConfig
    from gptvae.families import build_model

    config = ModelConfig(dim=32, depth=1, enc_depth=1, heads=2, attn_dim_head=16, dim_latent=4, max_seq_len=16)
    torch.manual_seed(0)
    return build_model(config, num_tokens=20), build_model(ModelConfig(**{**config.__dict__, "kind": "lm"}), num_tokens=20)


KEYS = {"n_sequences", "n_tokens", "iw_samples", "mc_samples", "mi_samples", "rec", "kl", "neg_elbo",
        "nll_bound_per_token", "iw_nll", "iw_nll_per_token", "ppl", "mi", "au", "lm_nll", "lm_nll_per_token",
        "lm_ppl", "mi_ceiling", "iw_ess_median", "swap_penalty_per_token"}


def test_evaluate_is_deterministic_and_complete():
    vae, _ = tiny_models()
    split, probe = token_split(30, seed=0), token_split(60, seed=1)
    kwargs = dict(iw_samples=8, max_tokens=96, mi_samples=20, probe_split=probe)
    first = evaluate(vae, split, seed=3, **kwargs)
    second = evaluate(vae, split, seed=3, **kwargs)
    other = evaluate(vae, split, seed=4, **kwargs)

    assert first == second
    assert first["iw_nll"] != other["iw_nll"]
    assert set(first) == KEYS | {"probe_acc_low", "probe_z_acc_low", "probe_majority_low"}
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in first.values())
    assert first["mi_samples"] == 20 and first["iw_samples"] == 8 and first["n_tokens"] == split.num_tokens
    assert 0.0 <= first["probe_acc_low"] <= 1.0
    assert first["iw_nll"] <= first["neg_elbo"] + 1.0  # IW tightens the bound (up to MC noise)


def test_evaluate_latent_free_baseline():
    _, lm = tiny_models()
    split = token_split(20)
    out = evaluate(lm, split, iw_samples=8, max_tokens=96, probe_split=token_split(20, seed=1))
    assert set(out) == KEYS - {"mi", "au", "mi_ceiling"}
    assert out["rec"] == out["iw_nll"] == out["lm_nll"] == out["neg_elbo"]
    assert out["kl"] == 0.0 and out["ppl"] == out["lm_ppl"]
    assert out["mi_samples"] == 0 and out["iw_samples"] == 8


def test_evaluate_bf16_autocast_close_to_fp32():
    vae, _ = tiny_models()
    split = token_split(20)
    fp32 = evaluate(vae, split, iw_samples=4, max_tokens=96)
    bf16 = evaluate(vae, split, iw_samples=4, max_tokens=96, autocast=True)
    assert bf16["iw_nll"] == pytest.approx(fp32["iw_nll"], rel=0.05)
    assert bf16["n_tokens"] == fp32["n_tokens"]


class Ignores(TokenLinearGaussian):
    """The same model whose likelihood does not read z: a decoder that ignores its latent."""

    def log_likelihood(self, tokens, z):
        return self.lg.log_marginal(self.features(tokens))


def test_the_swap_penalty_is_zero_for_a_decoder_that_ignores_z_and_positive_for_one_that_reads_it():
    """Rec with another sentence's z minus Rec with its own: exactly 0 when p(x|z) does not depend on z,
    above 0 when z carries x (an informative linear-Gaussian model); a batch of one has no other
    sentence, so its value is missing rather than a self-comparison."""
    split = token_split()
    ignores = evaluate_split(Ignores([2.0, 0.5, 0.05, 0.001]), split, iw_samples=2, max_tokens=64, seed=0)
    assert ignores.metrics["swap_penalty_per_token"] == 0.0
    assert np.array_equal(ignores.sentences["rec_other"], ignores.sentences["rec"])
    reads = evaluate_split(TokenLinearGaussian([100.0] * 4), split, iw_samples=2, max_tokens=64, seed=0)
    weak = evaluate_split(TokenLinearGaussian([0.01] * 4), split, iw_samples=2, max_tokens=64, seed=0)
    assert reads.metrics["swap_penalty_per_token"] > 0.5 > weak.metrics["swap_penalty_per_token"] > 0   # z varies less
    alone = evaluate_split(TokenLinearGaussian([0.01] * 4), split, iw_samples=2, max_tokens=1, seed=0)
    assert np.isnan(alone.sentences["rec_other"]).all()
