"""Evaluation metrics for a GPT with a latent. Everything is in nats.

The definitions are REFERENCE.md section 3; they are the contract. The functions here are written
against the small `LatentVariableModel` protocol and the latent distributions of `gptvae.latents`,
never against a model family, so the tests can check them on a linear-Gaussian model whose answers
are known in closed form.

Two mistakes in published code that these functions are built to avoid:

- the importance weight is  log p(x|z) + log p(z) - log q(z|x)  (prior plus, posterior minus);
  flipping those two signs still "works", but it is no longer a bound on -log p(x);
- MI is estimated once over the whole evaluation set. Averaging it over minibatches (He et al. 2019)
  makes it depend on the batch size; it is offered only as `minibatch_mutual_information`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Protocol

import torch
from einops import rearrange, repeat
from torch import Tensor
from tqdm.auto import tqdm

from gptvae.device import autocast_context, model_device
from gptvae.latents import Posterior, Prior

# the (rows x N) block of log q(z_i|x_j) the MI estimator holds at once, in elements
MI_BLOCK_ELEMENTS = 4_000_000
# token positions per decoder call when scoring (x, z) pairs: large calls amortise the per-call cost
IW_CHUNK_TOKENS = 32_768


def exists(v):
    return v is not None


def default(v, d):
    return v if exists(v) else d


class LatentVariableModel(Protocol):
    prior: Prior

    def posterior(self, x) -> Posterior: ...                # q(z|x), a batch of distributions
    def log_likelihood(self, x, z) -> Tensor: ...          # (B,) log p(x|z), summed over predicted tokens


def _wide(device: torch.device) -> torch.dtype:
    """The dtype for metric arithmetic: float64 wherever the device has it."""
    return torch.float32 if device.type == "mps" else torch.float64


def _upcast(t):
    """bf16 / fp16 -> fp32 (a tensor or a posterior); fp32 and fp64 are kept as they are."""
    dtype = t.dtype if isinstance(t, Tensor) else next(iter(vars(t).values())).dtype
    return t if dtype in (torch.float32, torch.float64) else t.to(torch.float32)


# forward passes (the only place the model is called; autocast lives here and only here)

def _posterior(model, x, *, autocast=False):
    with autocast_context(x.device, autocast):
        posterior = model.posterior(x)
    return _upcast(posterior)


def _log_likelihood(model, x, z, *, autocast=False) -> Tensor:
    with autocast_context(x.device, autocast):
        ll = model.log_likelihood(x, z)
    return _upcast(ll)


def log_likelihood_samples(model, x: Tensor, z: Tensor, *, chunk_size=None, autocast=False) -> Tensor:
    """log p(x|z_s) for z of shape (S, B, *event): (S, B), float64.

    The S samples go through the model as one batch of S*B rows (x repeated along the batch), at most
    `chunk_size` (x, z) pairs at a time. If one sample of the whole batch is already more than
    `chunk_size` pairs, the batch itself is split.
    """
    num_samples, batch = z.shape[:2]
    chunk_size = default(chunk_size, num_samples * batch)
    samples_per_chunk = max(1, chunk_size // batch)
    rows_per_chunk = min(batch, chunk_size)

    out = torch.empty(num_samples, batch, device=z.device, dtype=_wide(z.device))
    for s0 in range(0, num_samples, samples_per_chunk):
        s1 = min(num_samples, s0 + samples_per_chunk)
        for b0 in range(0, batch, rows_per_chunk):
            b1 = min(batch, b0 + rows_per_chunk)
            xs = repeat(x[b0:b1], "b ... -> (s b) ...", s=s1 - s0)
            zs = rearrange(z[s0:s1, b0:b1], "s b ... -> (s b) ...")
            ll = _log_likelihood(model, xs, zs, autocast=autocast)
            out[s0:s1, b0:b1] = rearrange(ll, "(s b) -> s b", s=s1 - s0).to(out.dtype)
    return out


# importance-weighted NLL (Burda et al. 2015)

def importance_weighted_nll_from_posterior(
    model,
    x: Tensor,
    posterior: Posterior,
    num_samples: int,
    *,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
    autocast: bool = False,
) -> Tensor:
    """-log p(x) ~= -(logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K), (B,), float64.

    Same as `importance_weighted_nll`, given the posterior already computed (evaluate shares one
    encoder pass between all metrics). The log-sum-exp runs over chunks of samples, so only one
    chunk of weights is alive at a time.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples}; IW-NLL needs at least one importance sample")
    batch = len(posterior)
    wide = _wide(x.device)
    chunk_size = default(chunk_size, num_samples * batch)
    samples_per_chunk = max(1, chunk_size // batch)

    posterior_w = posterior.to(wide)
    running = torch.full((batch,), -math.inf, dtype=wide, device=x.device)

    for s0 in range(0, num_samples, samples_per_chunk):
        s1 = min(num_samples, s0 + samples_per_chunk)
        z = posterior.sample(s1 - s0, generator=generator)                             # (s, B, ...)
        ll = log_likelihood_samples(model, x, z, chunk_size=chunk_size, autocast=autocast)

        # weights from the very z the decoder saw, in wide precision
        z_w = z.to(wide)
        log_w = ll.to(wide) + model.prior.log_prob(z_w) - posterior_w.log_prob(z_w)
        running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))

    return -(running - math.log(num_samples))


@torch.no_grad()
def importance_weighted_nll(
    model: LatentVariableModel,
    x: Tensor,
    num_samples: int,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
    *,
    autocast: bool = False,
) -> Tensor:
    """Importance-weighted estimate of -log p(x) per sequence, (B,), float64 (REFERENCE section 3).

    The encoder runs once; the K samples z_k ~ q(z|x) are drawn with `generator` and batched by
    repeating x, at most `chunk_size` (x, z) pairs per decoder call. Its expectation is >= -log p(x)
    and decreases to it as K grows; with the exact posterior it equals -log p(x) for any K.
    """
    posterior = _posterior(model, x, autocast=autocast)
    return importance_weighted_nll_from_posterior(
        model, x, posterior, num_samples, chunk_size=chunk_size, generator=generator, autocast=autocast
    )


# mutual information I(x; z) under q

def _log_aggregate_posterior(z: Tensor, posterior: Posterior) -> Tensor:
    """log q(z_i) ~= logsumexp_j log q(z_i|x_j) - log N for every row of z: (M,).

    The (M, N) matrix of log q(z_i|x_j) is built in blocks of about MI_BLOCK_ELEMENTS numbers.
    """
    num = len(posterior)
    out = []
    for zi in z.split(max(1, MI_BLOCK_ELEMENTS // num)):
        out.append(torch.logsumexp(posterior.cross_log_prob(zi), dim=-1) - math.log(num))
    return torch.cat(out)


@torch.no_grad()
def mutual_information(posterior: Posterior, generator: torch.Generator | None = None) -> float:
    """MI = mean_i E_q[log q(z|x_i)] - mean_i [logsumexp_j log q(z_i|x_j) - log N], one z_i ~ q(z|x_i).

    The whole-evaluation-set estimator (Li et al. 2019 `calc_mi`, Optimus) over all N rows of the
    posterior. It is at most about log N (exactly so up to the noise of the entropy term, which uses
    the expectation rather than log q(z_i|x_i)): report N beside it.
    """
    posterior = posterior.to(_wide(posterior.mean.device))
    z = posterior.sample(1, generator=generator)[0]
    return (-posterior.entropy().mean() - _log_aggregate_posterior(z, posterior).mean()).item()


@torch.no_grad()
def minibatch_mutual_information(posterior: Posterior, batch_size: int,
                                 generator: torch.Generator | None = None) -> float:
    """He et al. 2019's variant: the same estimator inside each consecutive minibatch of `batch_size`
    rows, averaged with weights equal to the minibatch sizes.

    It DEPENDS ON THE BATCH SIZE (each term is bounded by about log batch_size and its marginal
    q(z) is a mixture of only batch_size components). Kept for comparison with published numbers;
    report `mutual_information` instead.
    """
    total, count = 0.0, 0
    for i0 in range(0, len(posterior), batch_size):
        part = posterior[i0:i0 + batch_size]
        total += mutual_information(part, generator=generator) * len(part)
        count += len(part)
    return total / count


# active units (Burda et al. 2015) and perplexity

def posterior_mean_variance(mean: Tensor) -> Tensor:
    """A_u = Var_x(E_q[z_u|x]) over the rows, unbiased, (U,): `mean` is a posterior's per-unit mean."""
    return mean.to(_wide(mean.device)).var(dim=0, correction=1)


def active_units(mean: Tensor, threshold: float = 0.01) -> int:
    """Number of latent units with Var_x(E_q[z_u|x]) >= threshold (Burda et al. 2015, delta = 0.01)."""
    return int((posterior_mean_variance(mean) >= threshold).sum().item())


def perplexity(total_nll, total_tokens) -> float:
    """exp(total NLL / total predicted tokens); the tokens are words + EOS, never BOS."""
    return math.exp(float(total_nll) / float(total_tokens))


# evaluation over a split

@contextmanager
def _eval_mode(model):
    """model.eval() inside, the previous mode restored after (also on error)."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if hasattr(model, "train"):
            model.train(was_training)


@torch.no_grad()
def posteriors(model, split, *, max_tokens: int = 4096, autocast: bool = False):
    """q(z|x) for every sequence of `split`, in split order, float32 on CPU."""
    from gptvae.data import batch_plan, collate

    device = model_device(model)
    parts, order = [], []
    with _eval_mode(model):
        for index in batch_plan(split.lengths, max_tokens=max_tokens, shuffle=False):
            parts.append(_posterior(model, collate(split, index).to(device), autocast=autocast).to("cpu", torch.float32))
            order.append(index)
    posterior = type(parts[0]).cat(parts)
    return posterior[torch.argsort(torch.cat(order))]


def _probe_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor) -> float:
    """Linear probe: standardized features, logistic regression fit on train, accuracy on test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, test_x = train_x.double().numpy(), test_x.double().numpy()
    train_y, test_y = train_y.numpy(), test_y.numpy()
    classes = set(train_y.tolist())
    if len(classes) < 2:  # nothing to fit: the only class seen is the prediction
        return float((test_y == train_y[0]).mean())
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))  # lbfgs: deterministic
    probe.fit(train_x, train_y)
    return float(probe.score(test_x, test_y))


@torch.no_grad()
def evaluate(
    model,
    split,
    *,
    iw_samples: int = 500,
    mc_samples: int = 1,
    max_tokens: int = 4096,
    iw_chunk_size: int | None = None,
    mi_samples: int | None = None,
    seed: int = 0,
    probe_split=None,
    autocast: bool = False,
    progress: bool = False,
) -> dict:
    """All REFERENCE section 3 metrics of `model` on `split`, as a flat dict of python numbers.

    Per-sequence means unless the key says otherwise; `*_per_token` divide sums by the number of
    predicted tokens n(x) = non-PAD tokens - 1 (words + EOS). Every sample comes from one CPU
    generator seeded with `seed`, so the same seed gives the same dict (on the same device).

    When the latent has no units (the LM baseline) the likelihood is exact: rec = iw_nll = lm_nll,
    kl = 0, nothing is sampled (iw_samples and mc_samples report the settings asked for, so that rows
    line up; mi_samples is 0), and the mi / au / probe_acc_* keys, which need a latent, are absent.
    """
    from gptvae.data import PAD, batch_plan, collate

    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    num = len(split)

    sums = dict(rec=0.0, kl=0.0, neg_elbo=0.0, iw_nll=0.0, lm_nll=0.0)
    n_tokens = 0
    parts, order = [], []

    with _eval_mode(model):
        plan = batch_plan(split.lengths, max_tokens=max_tokens, shuffle=False)
        for index in tqdm(plan, desc=f"evaluate (K={iw_samples})", unit="batch", disable=not progress, leave=False):
            tokens = collate(split, index).to(device)
            # (x, z) pairs per decoder call: a token budget, so memory stays bounded and calls stay large
            chunk = default(iw_chunk_size, max(1, max(max_tokens, IW_CHUNK_TOKENS) // tokens.shape[1]))
            n_tokens += int(((tokens != PAD).sum(-1) - 1).sum().item())

            lm_ll = _log_likelihood(model, tokens, None, autocast=autocast).double()
            sums["lm_nll"] += -lm_ll.sum().item()

            posterior = _posterior(model, tokens, autocast=autocast)
            parts.append(posterior.to("cpu", torch.float32))
            order.append(index)
            if posterior.units == 0:   # no latent: log p(x|z) is the exact likelihood, nothing to sample
                continue

            z = posterior.sample(mc_samples, generator=generator)
            ll = log_likelihood_samples(model, tokens, z, chunk_size=chunk, autocast=autocast)
            rec = -ll.double().mean(0)                                         # (B,)
            kl = posterior.to(torch.float64).kl().flatten(1).sum(-1)           # (B,)
            iw = importance_weighted_nll_from_posterior(
                model, tokens, posterior, iw_samples, chunk_size=chunk, generator=generator, autocast=autocast,
            )

            sums["rec"] += rec.sum().item()
            sums["kl"] += kl.sum().item()
            sums["neg_elbo"] += (rec + kl).sum().item()
            sums["iw_nll"] += iw.sum().item()

    has_units = parts[0].units > 0
    if not has_units:   # exact likelihood: every bound is the likelihood itself
        sums.update(rec=sums["lm_nll"], neg_elbo=sums["lm_nll"], iw_nll=sums["lm_nll"])

    out = dict(
        n_sequences=num,
        n_tokens=n_tokens,
        iw_samples=iw_samples,
        mc_samples=mc_samples,
        mi_samples=0,
        rec=sums["rec"] / num,
        kl=sums["kl"] / num,
        neg_elbo=sums["neg_elbo"] / num,
        nll_bound_per_token=sums["neg_elbo"] / n_tokens,
        iw_nll=sums["iw_nll"] / num,
        iw_nll_per_token=sums["iw_nll"] / n_tokens,
        ppl=perplexity(sums["iw_nll"], n_tokens),
        lm_nll=sums["lm_nll"] / num,
        lm_nll_per_token=sums["lm_nll"] / n_tokens,
        lm_ppl=perplexity(sums["lm_nll"], n_tokens),
    )
    if not has_units:
        return out

    posterior = type(parts[0]).cat(parts)[torch.argsort(torch.cat(order))]   # split order

    # MI on a seeded subset when asked (it is O(N^2)); AU and probes use every row
    rows = torch.arange(num)
    if exists(mi_samples) and mi_samples < num:
        rows = torch.randperm(num, generator=generator)[:mi_samples]
    out["mi_samples"] = len(rows)
    out["mi"] = mutual_information(posterior[rows], generator=generator)
    out["au"] = active_units(posterior.mean)

    if exists(probe_split):
        probe_mean = posteriors(model, probe_split, max_tokens=max_tokens, autocast=autocast).mean
        for name, labels in split.labels.items():
            out[f"probe_acc_{name}"] = _probe_accuracy(probe_mean, probe_split.labels[name], posterior.mean, labels)
    return out
