"""The model reads upstream's GPTVAE correctly: parity, the likelihood path, the masked-latent path, generation."""

import pytest
import torch
import torch.nn.functional as F
from x_transformers.gpt_vae import GPTVAE as UpstreamGPTVAE

from gptvae.data import BOS, EOS, PAD
from gptvae.config import ModelConfig, ObjectiveConfig
from gptvae.families import build_model
from gptvae.families.gptvae import Model as GPTVAE
from gptvae.families.lm import Model as GPT
from gptvae.objective import objective

V = 24
SMALL = dict(dim=32, depth=2, enc_depth=1, heads=2, attn_dim_head=32, dim_latent=6, max_seq_len=32)


def batch_of_sequences(seed=0, batch=6, length=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(4, V, (batch, length), generator=g)
    x[:, 0] = BOS
    lengths = torch.tensor([12, 12, 9, 6, 11, 3])[:batch]
    for i, n in enumerate(lengths.tolist()):
        x[i, n - 1] = EOS
        x[i, n:] = PAD
    return x


def paired_models(*, dropout=0.0, floor=0.0, weight=1.0):
    torch.manual_seed(0)
    ours = GPTVAE(ModelConfig(**SMALL), num_tokens=V)
    upstream = UpstreamGPTVAE(num_tokens=V, pad_id=PAD, latents_dropout_prob=dropout, vae_kl_div_floor=floor,
                              vae_kl_loss_weight=weight, rotary_pos_emb=True,
                              **{k: v for k, v in SMALL.items()})
    upstream.load_state_dict(ours.net.state_dict())
    return ours, upstream


@pytest.mark.parametrize("dropout,floor,weight", [(0.0, 0.0, 1.0), (0.5, 0.1, 0.7), (0.3, 0.5, 2.0)])
def test_upstream_scale_reproduces_x_transformers_loss(dropout, floor, weight):
    ours, upstream = paired_models(dropout=dropout, floor=floor, weight=weight)
    x = batch_of_sequences()
    config = ObjectiveConfig(beta=weight, free_bits=floor, latent_dropout=dropout, scale="upstream")
    for seed in range(4):  # several RNG states: dropout patterns differ, parity must hold for each
        torch.manual_seed(seed)
        expected, (ar_loss, _) = upstream(x, return_all_losses=True)
        torch.manual_seed(seed)
        terms = objective(ours, x, config)
        assert terms.loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
        assert (terms.rec / terms.tokens).item() == pytest.approx(ar_loss.item(), rel=1e-5)


def test_elbo_scale_is_minus_elbo_per_token():
    """beta=1, floor=0: loss == -(sum log p(x|z) - KL) / tokens, with both terms computed independently."""
    ours, _ = paired_models()
    x = batch_of_sequences()
    torch.manual_seed(3)
    terms = objective(ours, x, ObjectiveConfig(beta=1.0, free_bits=0.0))

    torch.manual_seed(3)   # replay the same eps
    pooled = ours.net.encoder(x, mask=x != PAD)
    mu, logvar = ours.net.to_latent_mean_log_variance(pooled)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    logits = ours.net.decoder(x, prepend_embeds=ours.net.from_latent_to_prepend_token(z))[:, 1:-1]
    log_probs = logits.log_softmax(-1).gather(-1, x[:, 1:, None]).squeeze(-1)
    log_lik = (log_probs * (x[:, 1:] != PAD)).sum()
    posterior = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    kl = torch.distributions.kl_divergence(posterior, torch.distributions.Normal(0.0, 1.0)).sum()
    tokens = int((x[:, 1:] != PAD).sum())

    assert tokens == int(sum((row != PAD).sum() - 1 for row in x))
    assert terms.tokens == tokens
    assert terms.loss.item() == pytest.approx((-(log_lik - kl) / tokens).item(), rel=1e-5)
    assert terms.kl.item() == pytest.approx(kl.item(), rel=1e-5)


def test_masked_latent_is_the_plain_decoder_under_rotary():
    """z=None masks the slot; with rotary embeddings that equals decoding with no slot at all (REFERENCE 1.3)."""
    model, _ = paired_models()
    x = batch_of_sequences()
    with torch.no_grad():
        masked = model.log_likelihood(x, None)
        logits = model.net.decoder(x[:, :-1])
        plain = -F.cross_entropy(logits.transpose(1, 2), x[:, 1:], ignore_index=PAD, reduction="none").sum(-1)
        conditioned = model.log_likelihood(x, torch.randn(x.shape[0], SMALL["dim_latent"]))
    torch.testing.assert_close(masked, plain, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(masked, conditioned)   # the latent does change the likelihood


def test_padding_does_not_change_a_sequence_likelihood():
    model, _ = paired_models()
    x = batch_of_sequences()
    z = torch.randn(x.shape[0], SMALL["dim_latent"])
    with torch.no_grad():
        batched = model.log_likelihood(x, z)
        mu = model.posterior(x).mean
        for i in range(x.shape[0]):
            n = int((x[i] != PAD).sum())
            alone = model.log_likelihood(x[i:i + 1, :n], z[i:i + 1])
            assert alone.item() == pytest.approx(batched[i].item(), abs=1e-4)
            assert torch.allclose(model.posterior(x[i:i + 1, :n]).mean, mu[i:i + 1], atol=1e-5)


def test_lm_baseline_is_the_vae_decoder_without_the_latent():
    vae, _ = paired_models()
    lm = GPT(ModelConfig(kind="lm", **SMALL), num_tokens=V)
    shapes = lambda m: sorted((name, tuple(p.shape)) for name, p in m.named_parameters())  # noqa: E731
    assert shapes(lm.decoder) == shapes(vae.net.decoder)


def test_lm_baseline_likelihood_and_no_kl():
    torch.manual_seed(0)
    lm = GPT(ModelConfig(kind="lm", **SMALL), num_tokens=V)
    x = batch_of_sequences()
    with torch.no_grad():
        logits = lm.decoder(x[:, :-1])
        expected = (logits.log_softmax(-1).gather(-1, x[:, 1:, None]).squeeze(-1) * (x[:, 1:] != PAD)).sum(-1)
        torch.testing.assert_close(lm.log_likelihood(x), expected, rtol=1e-5, atol=1e-4)
        terms = objective(lm, x, ObjectiveConfig())
    assert terms.kl.item() == 0.0
    assert terms.loss.item() == pytest.approx(-expected.sum().item() / terms.tokens, rel=1e-5)


def test_generation_modes():
    model, _ = paired_models()
    prompts = torch.full((3, 1), BOS)
    z = torch.randn(SMALL["dim_latent"])
    greedy_a = model.generate(prompts, max_new_tokens=10, z=z, temperature=0.0)
    greedy_b = model.generate(prompts, max_new_tokens=10, z=z.expand(3, -1), temperature=0.0)
    assert torch.equal(greedy_a, greedy_b) and greedy_a.shape == (3, 10)
    assert (greedy_a[0] == greedy_a[1]).all()   # same latent, greedy: same continuation
    reference = batch_of_sequences(batch=3)
    assert model.generate(prompts, max_new_tokens=5, reference=reference).shape == (3, 5)
    assert model.generate(prompts, max_new_tokens=5, prior=True).shape == (3, 5)
    assert model.generate(prompts, max_new_tokens=5).shape == (3, 5)
    with pytest.raises(ValueError, match="at most one"):
        model.generate(prompts, max_new_tokens=5, z=z, prior=True)


@pytest.mark.parametrize("change,message", [
    (dict(dim_latent=0), "dim_latent=0"),
    (dict(kind="rnn"), "allowed: vae, lm"),
    (dict(depth=0), "depth=0"),
])
def test_bad_model_config_is_one_clear_error(change, message):
    with pytest.raises(ValueError, match=message):
        build_model(ModelConfig(**{**SMALL, **change}), num_tokens=V)
