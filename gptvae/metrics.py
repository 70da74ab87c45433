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
from dataclasses import dataclass
from typing import Protocol

import numpy as np
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


def _log_likelihood_many(model, x, z, *, autocast=False) -> Tensor:
    """log p(x|z_s) for z (S, B, *event): (S, B). A family whose decoder does part of its work before it reads
    z shares that part between the S samples through its own `log_likelihood_samples(x, z)`; any other
    model sees S * B rows, x repeated."""
    if hasattr(model, "log_likelihood_samples"):
        with autocast_context(x.device, autocast):
            ll = model.log_likelihood_samples(x, z)
        return _upcast(ll)
    xs = repeat(x, "b ... -> (s b) ...", s=z.shape[0])
    ll = _log_likelihood(model, xs, rearrange(z, "s b ... -> (s b) ..."), autocast=autocast)
    return rearrange(ll, "(s b) -> s b", s=z.shape[0])


def log_likelihood_samples(model, x: Tensor, z: Tensor, *, chunk_size=None, autocast=False) -> Tensor:
    """log p(x|z_s) for z of shape (S, B, *event): (S, B), float64.

    The S samples go through the model as one batch of S*B rows (x repeated along the batch, or shared
    where the family can: `_log_likelihood_many`), at most `chunk_size` (x, z) pairs at a time. If one
    sample of the whole batch is already more than `chunk_size` pairs, the batch itself is split.
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
            out[s0:s1, b0:b1] = _log_likelihood_many(model, x[b0:b1], z[s0:s1, b0:b1], autocast=autocast).to(out.dtype)
    return out


# importance-weighted NLL (Burda et al. 2015)

def _log_weights(model, posterior_w: Posterior, z: Tensor, ll: Tensor) -> Tensor:
    """log p(x|z) + log p(z) - log q(z|x) for samples z (S, B, ...), in the dtype of posterior_w: the
    weights from the very z the decoder saw (prior plus, posterior minus)."""
    z_w = z.to(posterior_w.mean.dtype)
    return ll.to(z_w.dtype) + model.prior.log_prob(z_w) - posterior_w.log_prob(z_w)


def importance_weighted_nll_from_posterior(model, x: Tensor, posterior: Posterior, num_samples: int, **kwargs) -> Tensor:
    """-log p(x) ~= -(logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K), (B,), float64.

    Same as `importance_weighted_nll`, given the posterior already computed (evaluate shares one
    encoder pass between all metrics). Keywords as `importance_weighted_estimate`.
    """
    return importance_weighted_estimate(model, x, posterior, num_samples, **kwargs)[0]


def importance_weighted_estimate(
    model,
    x: Tensor,
    posterior: Posterior,
    num_samples: int,
    *,
    chunk_size: int | None = None,
    generator: torch.Generator | None = None,
    autocast: bool = False,
) -> tuple[Tensor, Tensor]:
    """(IW-NLL, effective sample size) per sequence, both (B,), float64.

    ESS = (sum_k w_k)^2 / sum_k w_k^2, between 1 and K: how many of the K samples carry the estimate.
    Near 1, one sample dominates: the posterior is so far from p(z|x) that K samples cannot estimate
    log p(x), and the IW-NLL is a loose bound rather than an estimate. The log-sum-exps run over
    chunks of samples, so only one chunk of weights is alive at a time.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples}; IW-NLL needs at least one importance sample")
    batch = len(posterior)
    wide = _wide(x.device)
    chunk_size = default(chunk_size, num_samples * batch)
    samples_per_chunk = max(1, chunk_size // batch)

    posterior_w = posterior.to(wide)
    running = torch.full((batch,), -math.inf, dtype=wide, device=x.device)
    running_sq = running.clone()   # logsumexp of 2 log w, for the effective sample size

    for s0 in range(0, num_samples, samples_per_chunk):
        s1 = min(num_samples, s0 + samples_per_chunk)
        z = posterior.sample(s1 - s0, generator=generator)                             # (s, B, ...)
        ll = log_likelihood_samples(model, x, z, chunk_size=chunk_size, autocast=autocast)

        # weights from the very z the decoder saw, in wide precision
        log_w = _log_weights(model, posterior_w, z, ll)
        running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
        running_sq = torch.logaddexp(running_sq, torch.logsumexp(2 * log_w, dim=0))

    return -(running - math.log(num_samples)), torch.exp(2 * running - running_sq)


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


@torch.no_grad()
def iw_nll_curve(model, split, ks, *, max_tokens: int = 4096, seed: int = 0, autocast: bool = False,
                 progress: bool = False):
    """IW-NLL of `split` at every K in `ks`, nested: max(ks) samples per sequence are drawn once, and the
    estimate at K uses the first K of them (a K = 1 estimate is a one-sample ELBO). A DataFrame with
    K, iw_nll (nats per sequence), iw_nll_per_token, n_sequences and n_tokens.
    """
    import pandas as pd

    from gptvae.data import PAD, batch_plan, collate

    ks = sorted(set(ks))
    k_max = ks[-1]
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    sums = torch.zeros(len(ks), dtype=torch.float64)
    n_tokens = 0
    with _eval_mode(model):
        for index in tqdm(batch_plan(split.lengths, max_tokens=max_tokens, shuffle=False), desc=f"K sweep (K<={k_max})",
                          unit="batch", disable=not progress, leave=False):
            tokens = collate(split, index).to(device)
            n_tokens += int(((tokens != PAD).sum(-1) - 1).sum().item())
            posterior = _posterior(model, tokens, autocast=autocast)
            chunk = max(1, IW_CHUNK_TOKENS // tokens.shape[1])
            z = posterior.sample(k_max, generator=generator)                          # (K, B, ...)
            ll = log_likelihood_samples(model, tokens, z, chunk_size=chunk, autocast=autocast)
            log_w = _log_weights(model, posterior.to(ll.dtype), z, ll)                 # (K, B)
            for i, k in enumerate(ks):
                sums[i] += -(torch.logsumexp(log_w[:k], dim=0) - math.log(k)).sum().cpu()
    num = len(split)
    return pd.DataFrame({"K": ks, "iw_nll": (sums / num).numpy(), "iw_nll_per_token": (sums / n_tokens).numpy(),
                         "n_sequences": num, "n_tokens": n_tokens})


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


def _one_length(posterior: Posterior) -> bool:
    """Whether MI is defined over these rows: always for one latent per sequence; for a latent per token
    only when every sequence has the same positions (MI compares latents position by position)."""
    return posterior.present is None or bool(posterior.present.all())


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
def mutual_information_repeated(posterior: Posterior, repeats: int,
                                generator: torch.Generator | None = None) -> tuple[float, float]:
    """(mean, standard deviation) of `mutual_information` over `repeats` independent draws of z: the
    estimate, and its noise from sampling z (the set of rows held fixed). Its ceiling is log N."""
    draws = torch.tensor([mutual_information(posterior, generator=generator) for _ in range(repeats)],
                         dtype=torch.float64)
    return draws.mean().item(), (draws.std(correction=1).item() if repeats > 1 else math.nan)


@torch.no_grad()
def unit_mutual_information(posterior: Posterior, generator: torch.Generator | None = None) -> Tensor:
    """MI between x and each latent unit alone, (U,): mean_i [log q(z_iu|x_i) - log q(z_iu)] with
    q(z_iu) = 1/N sum_j q(z_iu|x_j), one z_i ~ q(z|x_i) for all units. The one-dimensional version of
    `mutual_information` (with the sampled rather than the expected log q(z_i|x_i)). Units can share
    information, so these need not sum to the joint MI; each is at most about log N.
    """
    num, units = len(posterior), posterior.units
    z = posterior.sample(1, generator=generator)[0]                                   # (N, U)
    total = torch.zeros(units, dtype=torch.float64)
    step = max(1, MI_BLOCK_ELEMENTS // max(1, num * units))   # rows per (rows, N, U) block
    for i0 in range(0, num, step):
        block = posterior.unit_cross_log_prob(z[i0:i0 + step])                       # (rows, N, U)
        rows = torch.arange(len(block))
        own = block[rows, rows + i0]                                                   # log q(z_iu | x_i)
        total += (own - torch.logsumexp(block, dim=1)).double().sum(0).cpu()
    return total / num + math.log(num)


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
    """A_u = Var_x(E_q[z_u|x]) over the rows, unbiased, (U,): `mean` is a posterior's per-unit mean.

    A row without the unit (NaN: a per-token latent past the end of a shorter sequence) is left out of
    that unit's variance; a unit present in fewer than two rows has variance 0."""
    mean = mean.to(_wide(mean.device))
    if not torch.isnan(mean).any():
        return mean.var(dim=0, correction=1)
    count = (~torch.isnan(mean)).sum(0)
    centred = torch.nan_to_num(mean - mean.nanmean(0), nan=0.0)
    return torch.where(count >= 2, centred.square().sum(0) / (count - 1).clamp(min=1), torch.zeros_like(centred[0]))


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

    train_x, test_x = train_x.double(), test_x.double()
    if torch.isnan(train_x).any() or torch.isnan(test_x).any():   # a unit a row lacks reads as the unit's mean
        fill = torch.nan_to_num(train_x.nanmean(0), nan=0.0)
        train_x, test_x = (torch.where(torch.isnan(x), fill, x) for x in (train_x, test_x))
    train_x, test_x = train_x.numpy(), test_x.numpy()
    train_y, test_y = train_y.numpy(), test_y.numpy()
    classes = set(train_y.tolist())
    if len(classes) < 2:  # nothing to fit: the only class seen is the prediction
        return float((test_y == train_y[0]).mean())
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))  # lbfgs: deterministic
    probe.fit(train_x, train_y)
    return float(probe.score(test_x, test_y))


def majority_accuracy(train_y: Tensor, test_y: Tensor) -> float:
    """Accuracy of always predicting the most frequent class of train_y: what a probe must beat."""
    values, counts = torch.unique(train_y, return_counts=True)
    return float((test_y == values[counts.argmax()]).double().mean())


@torch.no_grad()
def latent_probes(model, probe_split, split, *, posterior: Posterior | None = None, max_tokens: int = 4096,
                  generator: torch.Generator | None = None, autocast: bool = False) -> dict[str, float]:
    """Linear probes of each label of `split`, fit on `probe_split`, three ways:

    probe_acc_<label>           on the posterior mean mu (standardised): information in the encoder,
                                which a collapsed model keeps in tiny differences the decoder never sees
    probe_z_acc_<label>         on one sample z ~ q(z|x): information the decoder can receive
    probe_majority_<label>      the majority class of probe_split: the floor both must beat
    """
    fit = posteriors(model, probe_split, max_tokens=max_tokens, autocast=autocast)
    test = posterior if exists(posterior) else posteriors(model, split, max_tokens=max_tokens, autocast=autocast)
    fit_z = fit.unit_values(fit.sample(1, generator=generator)[0])
    test_z = test.unit_values(test.sample(1, generator=generator)[0])
    out = {}
    for name, labels in split.labels.items():
        out[f"probe_acc_{name}"] = _probe_accuracy(fit.mean, probe_split.labels[name], test.mean, labels)
        out[f"probe_z_acc_{name}"] = _probe_accuracy(fit_z, probe_split.labels[name], test_z, labels)
        out[f"probe_majority_{name}"] = majority_accuracy(probe_split.labels[name], labels)
    return out


@dataclass
class Evaluation:
    """What `evaluate_split` measures: split-level numbers, and what they are sums or means of."""

    metrics: dict                       # flat, python numbers; see `evaluate`
    sentences: dict[str, np.ndarray]    # per sequence, in split order: row, tokens, rec, rec_other, kl, iw_nll,
                                        # lm_nll, iw_ess, neg_elbo
    units: dict[str, np.ndarray]        # per latent unit: unit, mi, mean_variance, kl (empty without a latent)


@torch.no_grad()
def evaluate_split(
    model,
    split,
    *,
    iw_samples: int = 500,
    mc_samples: int = 1,
    max_tokens: int = 4096,
    iw_chunk_size: int | None = None,
    mi_samples: int | None = None,
    mi_split=None,
    mi_repeats: int = 1,
    seed: int = 0,
    probe_split=None,
    autocast: bool = False,
    progress: bool = False,
) -> Evaluation:
    """All REFERENCE section 3 metrics of `model` on `split`, with the per-sequence and per-unit numbers
    behind them. Every sample comes from one CPU generator seeded with `seed`.

    metrics (per-sequence means unless the key says otherwise; `*_per_token` divide sums by the number
    of predicted tokens n(x) = non-PAD tokens - 1, words + EOS):
      n_sequences, n_tokens, iw_samples, mc_samples   what was measured
      rec, kl, neg_elbo, nll_bound_per_token          the ELBO's terms (Rec from mc_samples z ~ q)
      rec_other, swap_penalty_per_token               Rec with the draws of the next sentence in the batch
                                                      (z ~ q(z|x') for another x'), and (rec_other - rec)
                                                      summed over sentences / tokens: what a wrong z costs
                                                      the decoder (not bounded by the KL: a penalty for
                                                      being misled, not the information it uses)
      iw_nll, iw_nll_per_token, ppl                   IW-NLL with K = iw_samples, and PPL from it
      iw_ess_median                                   the median effective sample size of the K weights:
                                                      near 1, K samples cannot estimate log p(x)
      lm_nll, lm_nll_per_token, lm_ppl                exact NLL with the latent slot masked
      mi, mi_noise, mi_ceiling, mi_samples            MI over the rows of `mi_split` (default: `split`;
                                                      a seeded subset of mi_samples rows when asked):
                                                      the mean and standard deviation over mi_repeats
                                                      draws of z, and log N
      au                                              active units (delta = 0.01) over the rows of `split`

    units (per latent unit, over the rows of `split`): MI of the unit alone, Var_x(mu_u) (what AU
    thresholds) and the mean KL of the unit.
      probe_*                                         see `latent_probes` (when probe_split is given)

    When the latent has no units (the LM baseline) the likelihood is exact: rec = rec_other = iw_nll = lm_nll,
    kl = 0, nothing is sampled (iw_samples and mc_samples report the settings asked for, so that rows
    line up; mi_samples is 0), and the mi / au / probe keys, which need a latent, are absent. A latent per
    token (the Free Transformer) on sequences of different lengths has no MI (it compares latents position
    by position): the mi keys are absent, and so is the per-unit MI.
    """
    from gptvae.data import PAD, batch_plan, collate

    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    num = len(split)

    columns = ("tokens", "rec", "rec_other", "kl", "iw_nll", "lm_nll", "iw_ess")
    per = {name: torch.zeros(num, dtype=torch.float64) for name in columns}
    parts, order = [], []

    with _eval_mode(model):
        plan = batch_plan(split.lengths, max_tokens=max_tokens, shuffle=False)
        for index in tqdm(plan, desc=f"evaluate (K={iw_samples})", unit="batch", disable=not progress, leave=False):
            tokens = collate(split, index).to(device)
            # (x, z) pairs per decoder call: a token budget, so memory stays bounded and calls stay large
            chunk = default(iw_chunk_size, max(1, max(max_tokens, IW_CHUNK_TOKENS) // tokens.shape[1]))
            per["tokens"][index] = ((tokens != PAD).sum(-1) - 1).double().cpu()
            lm = -_log_likelihood(model, tokens, None, autocast=autocast).double().cpu()
            per["lm_nll"][index] = lm

            posterior = _posterior(model, tokens, autocast=autocast)
            parts.append(posterior.to("cpu", torch.float32))
            order.append(index)
            if posterior.units == 0:   # no latent: log p(x|z) is the exact likelihood, nothing to sample
                per["rec"][index] = per["rec_other"][index] = per["iw_nll"][index] = lm
                per["iw_ess"][index] = float(iw_samples)   # every weight is p(x): all K samples count
                continue

            z = posterior.sample(mc_samples, generator=generator)
            ll = log_likelihood_samples(model, tokens, z, chunk_size=chunk, autocast=autocast)
            per["rec"][index] = -ll.double().mean(0).cpu()
            # the swap penalty: the same draws given to the next sentence of the batch (an input the decoder
            # was trained on, unlike a masked slot); a batch of one has no other sentence
            if len(index) > 1:
                other = log_likelihood_samples(model, tokens, z.roll(1, dims=1), chunk_size=chunk, autocast=autocast)
                per["rec_other"][index] = -other.double().mean(0).cpu()
            else:
                per["rec_other"][index] = math.nan
            per["kl"][index] = posterior.to(torch.float64).kl().flatten(1).sum(-1).cpu()
            iw, ess = importance_weighted_estimate(
                model, tokens, posterior, iw_samples, chunk_size=chunk, generator=generator, autocast=autocast,
            )
            per["iw_nll"][index], per["iw_ess"][index] = iw.cpu(), ess.cpu()

    neg_elbo = per["rec"] + per["kl"]
    n_tokens = int(per["tokens"].sum().item())
    sums = {name: per[name].sum().item() for name in ("rec", "kl", "iw_nll", "lm_nll")}
    out = dict(
        n_sequences=num,
        n_tokens=n_tokens,
        iw_samples=iw_samples,
        mc_samples=mc_samples,
        mi_samples=0,
        rec=sums["rec"] / num,
        kl=sums["kl"] / num,
        neg_elbo=neg_elbo.sum().item() / num,
        nll_bound_per_token=neg_elbo.sum().item() / n_tokens,
        iw_nll=sums["iw_nll"] / num,
        iw_nll_per_token=sums["iw_nll"] / n_tokens,
        ppl=perplexity(sums["iw_nll"], n_tokens),
        lm_nll=sums["lm_nll"] / num,
        lm_nll_per_token=sums["lm_nll"] / n_tokens,
        lm_ppl=perplexity(sums["lm_nll"], n_tokens),
        iw_ess_median=per["iw_ess"].median().item(),
    )
    usable = ~torch.isnan(per["rec_other"])   # sentences that had another sentence in their batch
    out["swap_penalty_per_token"] = ((per["rec_other"] - per["rec"])[usable].sum()
                                    / per["tokens"][usable].sum().clamp(min=1)).item()
    sentences = {"row": np.arange(num), **{k: v.numpy() for k, v in per.items()}, "neg_elbo": neg_elbo.numpy()}
    sentences["tokens"] = sentences["tokens"].astype(np.int64)
    posterior = type(parts[0]).cat(parts)[torch.argsort(torch.cat(order))]   # split order
    if posterior.units == 0:
        return Evaluation(out, sentences, {})

    mi_posterior = posterior if mi_split is None else posteriors(model, mi_split, max_tokens=max_tokens,
                                                                 autocast=autocast)
    rows = torch.arange(len(mi_posterior))
    if exists(mi_samples) and mi_samples < len(rows):   # MI is O(N^2): a seeded subset when asked
        rows = torch.randperm(len(rows), generator=generator)[:mi_samples]
    mi_posterior = mi_posterior[rows]
    if _one_length(mi_posterior):   # else MI is not defined here (absent keys print as n/a)
        out["mi_samples"] = len(rows)
        out["mi"], noise = mutual_information_repeated(mi_posterior, mi_repeats, generator=generator)
        if not math.isnan(noise):
            out["mi_noise"] = noise
        out["mi_ceiling"] = math.log(len(rows))
    out["au"] = active_units(posterior.mean)
    units = {"unit": np.arange(posterior.units),
             "mi": (unit_mutual_information(posterior, generator=generator).numpy() if _one_length(posterior)
                    else np.full(posterior.units, np.nan)),   # the rows of `split`
             "mean_variance": posterior_mean_variance(posterior.mean).cpu().numpy(),
             "kl": posterior.to(torch.float64).kl().flatten(1).mean(0).numpy()}

    if exists(probe_split):
        out.update(latent_probes(model, probe_split, split, posterior=posterior, max_tokens=max_tokens,
                                 generator=generator, autocast=autocast))
    return Evaluation(out, sentences, units)


def evaluate(model, split, **kwargs) -> dict:
    """The split-level numbers of `evaluate_split` (same arguments) as a flat dict of python numbers."""
    return evaluate_split(model, split, **kwargs).metrics
