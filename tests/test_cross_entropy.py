"""The fused output layer computes what the textbook one computes: loss, gradients, IW-NLL, training."""

import pytest
import torch

from gptvae.config import apply_overrides, preset
from gptvae.cross_entropy import linear_log_prob, sequence_log_prob, textbook
from gptvae.data import PAD
from gptvae.files import CHECKPOINT, load_checkpoint
from gptvae.families import build_model
from gptvae.metrics import evaluate
from gptvae.train import train

B, N, D, C = 13, 11, 24, 301


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, N, D, generator=g)
    weight = torch.randn(C, D, generator=g) * 0.3
    target = torch.randint(PAD + 1, C, (B, N), generator=g)
    lengths = torch.randint(1, N + 1, (B,), generator=g)
    target[torch.arange(N)[None, :] >= lengths[:, None]] = PAD     # right padding
    target[3] = PAD                                                  # a row with nothing to score
    return hidden, weight, target


CHUNKS = [1, 7, 64, 10_000]   # one row at a time, ragged last chunks, several chunks, one chunk


def scored(hidden, weight, target, *, reference, autocast, weights=None, chunk_rows=64):
    """Per-sequence log-probs and the gradients of a loss over them (uniform or per-sequence weights)."""
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with textbook() if reference else torch.enable_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        log_prob = sequence_log_prob(h, w, target, ignore_index=PAD, chunk_rows=chunk_rows)
    loss = -log_prob.sum() / 97 if weights is None else (log_prob * weights).sum()
    loss.backward()
    return log_prob.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk_rows", CHUNKS)
@pytest.mark.parametrize("weights", [None, torch.linspace(-2, 3, B)], ids=["uniform", "per-sequence"])
def test_fp32_loss_and_gradients_equal_the_textbook_path(weights, chunk_rows):
    hidden, weight, target = batch()
    ours = scored(hidden, weight, target, reference=False, autocast=False, weights=weights, chunk_rows=chunk_rows)
    ref = scored(hidden, weight, target, reference=True, autocast=False, weights=weights)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ours[0][3] == 0 and ours[1][3].abs().max() == 0       # nothing scored, no gradient


@pytest.mark.parametrize("chunk_rows", CHUNKS)
@pytest.mark.parametrize("weights", [None, torch.linspace(-2, 3, B)], ids=["uniform", "per-sequence"])
def test_bf16_loss_and_gradients_are_as_close_to_exact_as_the_textbook_path(weights, chunk_rows):
    """Under autocast both paths round the logits and their gradient to bf16; measured against the exact
    float64 answer, the fused path must be at least about as accurate as the textbook one."""
    hidden, weight, target = batch(1)
    ours = scored(hidden, weight, target, reference=False, autocast=True, weights=weights, chunk_rows=chunk_rows)
    ref = scored(hidden, weight, target, reference=True, autocast=True, weights=weights)
    exact = scored(hidden.double(), weight.double(), target, reference=True, autocast=False,
                   weights=None if weights is None else weights.double())
    torch.testing.assert_close(ours[0], ref[0], rtol=0, atol=1e-4)   # the same bf16 logits, the same float32 sums
    for a, b, e in zip(ours[1:], ref[1:], exact[1:]):
        err_ours, err_ref = (a.double() - e).abs().max(), (b.double() - e).abs().max()
        assert err_ours <= 2 * err_ref + 1e-6, (err_ours, err_ref)
        assert err_ours <= 1e-2 * e.abs().max()


def test_scoring_without_gradients_equals_log_softmax():
    """The compiled no-gradient kernel and its eager fallback, against log_softmax, over chunk sizes."""
    import gptvae.cross_entropy as ce

    hidden, weight, target = batch(2)
    keep = target != PAD
    h, t = hidden[keep], target[keep]
    exact = torch.log_softmax(h.double() @ weight.double().T, -1).gather(1, t[:, None])[:, 0]
    with torch.no_grad():
        for rows in CHUNKS:
            torch.testing.assert_close(linear_log_prob(h, weight, t, chunk_rows=rows).double(), exact,
                                       rtol=0, atol=1e-5)
        logits = h @ weight.T
        torch.testing.assert_close(ce._target_log_prob(logits, t), ce._target_log_prob_eager(logits, t),
                                   rtol=0, atol=1e-5)


def test_out_of_range_targets_are_one_clear_error():
    hidden, weight = torch.randn(4, D), torch.randn(C, D)
    for bad in (C, -1):
        with pytest.raises(ValueError, match=rf"targets must lie in \[0, {C}\)"):
            linear_log_prob(hidden, weight, torch.tensor([1, 2, bad, 3]))


def test_second_derivatives_are_refused_not_wrong():
    hidden, weight, target = batch()
    h = hidden.clone().requires_grad_()
    (grad,) = torch.autograd.grad(sequence_log_prob(h, weight, target, ignore_index=PAD).sum(), h, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


def test_nothing_to_score_gives_zero_and_zero_gradients():
    hidden = torch.randn(2, 3, D, requires_grad=True)
    weight = torch.randn(C, D, requires_grad=True)
    log_prob = sequence_log_prob(hidden, weight, torch.full((2, 3), PAD), ignore_index=PAD)
    log_prob.sum().backward()
    assert log_prob.tolist() == [0.0, 0.0]
    assert hidden.grad.abs().max() == 0 and weight.grad.abs().max() == 0


@pytest.mark.parametrize("kind", ["vae", "lm"])
def test_family_likelihood_equals_the_decoders_own_logits(kind):
    """Against the logits the x-transformers decoder itself returns (its to_logits applied), scored by
    F.cross_entropy: the code before the fused layer. Catches a hidden state that is not what to_logits sees."""
    from gptvae.cross_entropy import textbook_sequence_log_prob

    cfg = apply_overrides(preset("smoke"), {"model.kind": kind})
    torch.manual_seed(0)
    model = build_model(cfg.model, num_tokens=40).eval()
    x = torch.randint(4, 40, (6, 9))
    x[:, 0] = 1
    x[2, 5:] = PAD
    z = torch.randn(6, model.prior.units)
    drop = torch.tensor([False, True, False, False, True, False])
    with torch.no_grad():
        if kind == "vae":
            fused = model.log_likelihood(x, z, drop_latent=drop)
            logits = model.net.decoder(x[:, :-1], prepend_embeds=model.net.from_latent_to_prepend_token(z),
                                       seq_start_pos=drop.long())[:, 1:]
        else:
            fused = model.log_likelihood(x, z)
            logits = model.decoder(x[:, :-1])
        ref = textbook_sequence_log_prob(logits, x[:, 1:], ignore_index=PAD)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)


SYNTHETIC = {"data.dataset": "synthetic", "data.synthetic_train": 600, "data.synthetic_eval": 64,
             "train.steps": 24, "train.eval_every": 8, "train.log_every": 4, "eval.max_sequences": 32}


@pytest.fixture(scope="module")
def trained_smoke(tmp_path_factory):
    cfg = apply_overrides(preset("smoke"), SYNTHETIC)
    return train(cfg, run_dir=tmp_path_factory.mktemp("smoke"), progress=False)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_iw_nll_of_a_trained_model_equals_the_textbook_path(trained_smoke, autocast):
    split = trained_smoke.corpus.splits["valid"]
    common = dict(iw_samples=16, max_tokens=512, seed=3, autocast=autocast)
    fast = evaluate(trained_smoke.model, split, **common)
    with textbook():
        ref = evaluate(trained_smoke.model, split, **common)
    assert fast["iw_samples"] == 16 and fast["n_tokens"] == ref["n_tokens"]
    # the issue asks for 1e-3 nats/token; both paths score the same logits, so far less holds
    assert abs(fast["iw_nll_per_token"] - ref["iw_nll_per_token"]) < 1e-5
    assert abs(fast["lm_nll_per_token"] - ref["lm_nll_per_token"]) < 1e-5
    assert fast["kl"] == pytest.approx(ref["kl"], abs=1e-6)           # the encoder is untouched


def test_bf16_training_is_deterministic_and_resumes_exactly(tmp_path):
    """The step `gptvae train` runs on this machine (bf16 autocast where it is fast, the fused output
    layer, fused AdamW): the same seed gives the same weights, and a resumed run ends where an
    uninterrupted one does."""
    cfg = apply_overrides(preset("smoke"), {**SYNTHETIC, "train.autocast": True})
    first = train(cfg, run_dir=tmp_path / "a", progress=False)
    second = train(cfg, run_dir=tmp_path / "b", progress=False, stop_after=13)
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT)["step"] == 8
    resumed = train(cfg, run_dir=tmp_path / "b", progress=False)
    assert second.step == 13 and resumed.resumed_from == 8 and resumed.finished
    for (name, a), (_, b) in zip(first.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
