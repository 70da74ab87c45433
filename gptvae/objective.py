"""The training objective: the ELBO at the right scale, free bits, latent dropout, beta schedules.

REFERENCE section 2. At scale "elbo" (the default) the loss over a batch B is

    ( sum_x -log p(x|z_x) + beta * sum_x FB(KL(x)) ) / sum_x n(x)          nats per predicted token,

which is exactly -ELBO / tokens at beta = 1 and floor = 0, for one z per sequence (GPTVAE: KL(x) sums over
the D dimensions) and for a latent per token (the Free Transformer: KL(x) sums over positions and bits, and
the per_token floor is sum_t max(KL_t(x), kappa) over the positions t that carry a latent). The floor is
given in nats or in bits (objective.free_bits_unit). Scale "upstream" reproduces x-transformers' losses:
GPTVAE's token-mean CE + beta * batch-mean of sum_d relu(KL_d - floor), whose effective KL weight is beta *
tokens-per-sequence, and FreeTransformer's token-mean CE + beta * mean over all positions of
relu(KL_t - kappa); it exists for parity checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gptvae.config import FREE_BITS_MODES, SCHEDULES, ObjectiveConfig
from gptvae.data import PAD


def beta_at(config: ObjectiveConfig, step: int, total_steps: int) -> float:
    """The KL weight at optimisation step `step` (0-based) of `total_steps`."""
    b0, b1 = config.beta_start, config.beta

    def ramp(progress: float) -> float:
        return b0 + (b1 - b0) * min(max(progress, 0.0), 1.0)

    if config.schedule == "constant":
        return b1
    if config.schedule == "linear":
        return ramp(step / _linear_steps(config, total_steps))
    if config.schedule == "cyclical":
        period = total_steps / config.cycles
        tau = (step % period) / period          # position inside the current cycle, in [0, 1)
        return ramp(tau / config.cycle_ratio)
    if config.schedule == "zero_linear":
        zero_end = config.zero_fraction * total_steps
        if step < zero_end:
            return 0.0
        return ramp((step - zero_end) / (config.ramp_fraction * total_steps))
    raise ValueError(f"objective.schedule={config.schedule!r} is unknown; allowed: {', '.join(SCHEDULES)}")


def _linear_steps(config: ObjectiveConfig, total_steps: int) -> float:
    """The linear schedule's rise: warmup_steps, or ramp_fraction of training when warmup_steps is 0."""
    return config.warmup_steps if config.warmup_steps > 0 else max(1.0, config.ramp_fraction * total_steps)


def beta_settled(config: ObjectiveConfig, total_steps: int) -> int:
    """The first step from which the KL weight stays at its final value: where a plateau of the bound
    can first be judged (a bound measured while beta still moves is not the objective's plateau)."""
    if config.schedule == "linear":
        return math.ceil(_linear_steps(config, total_steps))
    if config.schedule == "cyclical":
        period = total_steps / config.cycles
        return math.ceil((config.cycles - 1 + config.cycle_ratio) * period)
    if config.schedule == "zero_linear":
        return math.ceil((config.zero_fraction + config.ramp_fraction) * total_steps)
    return 0


def free_bits_kl(kl: Tensor, *, floor: float, mode: str, present: Tensor | None = None) -> Tensor:
    """sum_{x in B} FB(KL(x)): the floored KL that drives gradients (REFERENCE 2). kl is the posterior's
    (B, *units): (B, D) for one z per sequence, (B, T, H) for H bits at each of T positions.

    max(KL, floor) is written floor + relu(KL - floor) so that the gradient is upstream's exactly,
    also at KL == floor (where clamp would pass it through). per_token floors the KL of each position
    (summed over its bits) that carries a latent, `present` (B, T): the Free Transformer's kappa.
    """
    def floored(t: Tensor) -> Tensor:
        return floor + F.relu(t - floor)

    batch = kl.shape[0]
    if kl[0].numel() == 0:    # no latent units: there is no KL to floor
        return kl.sum()
    if mode == "per_token":   # sum_t max(KL_t(x), kappa) over the positions that carry a latent
        if kl.ndim != 3:
            raise ValueError(f"free_bits_mode='per_token' needs a latent per position, (B, T, bits); got {tuple(kl.shape)}")
        token = kl.sum(-1)
        return (floored(token) * (present if present is not None else 1)).sum()
    kl = kl.flatten(1)
    if mode == "per_dim":     # sum_d max(KL_d(x), lambda), per sequence
        return floored(kl).sum()
    if mode == "batch_dim":   # sum_d max(mean_x KL_d(x), lambda), charged once per sequence
        return batch * floored(kl.mean(dim=0)).sum()
    if mode == "total":       # max(sum_d KL_d(x), lambda), per sequence
        return floored(kl.sum(dim=-1)).sum()
    raise ValueError(f"free_bits_mode={mode!r} is unknown; allowed: {', '.join(FREE_BITS_MODES)}")


def upstream_kl_term(kl: Tensor, *, floor: float, mode: str) -> Tensor:
    """x-transformers' hinge form, batch mean of relu(KL - floor): same gradients as free_bits_kl. per_token
    is the Free Transformer's: the mean of relu(KL_t - kappa) over every position of the batch."""
    batch = kl.shape[0]
    if kl[0].numel() == 0:
        return kl.sum()
    if mode == "per_token":
        return F.relu(kl.sum(-1) - floor).mean()
    kl = kl.flatten(1)
    if mode == "per_dim":
        return F.relu(kl - floor).sum(dim=-1).mean()
    if mode == "batch_dim":
        return F.relu(kl.mean(dim=0) - floor).sum()
    return F.relu(kl.sum(dim=-1) - floor).sum() / batch


@dataclass
class Terms:
    """One batch's objective. Sums (not means) so that batches aggregate exactly."""

    loss: Tensor          # the scalar to minimise
    rec: Tensor           # sum_x -log p(x|z_x), nats
    kl: Tensor            # sum_x sum_units KL(x), unfloored, nats
    kl_floored: Tensor    # sum_x FB(KL(x)), what the gradient sees
    tokens: int           # predicted tokens (words + EOS)
    sequences: int
    beta: float


def latent_dropout_mask(batch: int, p: float, device) -> Tensor:
    """(B,) bool, True = decode this sequence without its latent.

    Drawn with F.dropout on a vector of ones, as upstream's nn.Dropout does, so that the same RNG
    state drops the same sequences in both implementations.
    """
    return F.dropout(torch.ones(batch, device=device), p=p, training=True) == 0


def objective(model, tokens: Tensor, config: ObjectiveConfig, *, beta: float | None = None) -> Terms:
    """The loss of one batch of BOS..EOS sequences (B, L), right-padded with PAD.

    Latent dropout applies only in train mode (upstream uses nn.Dropout); the KL is charged for
    dropped sequences too. Random draws follow upstream's order: eps, then the dropout mask. A model
    whose latent has no units (the LM) draws nothing and pays no KL: its loss is its exact NLL.
    """
    beta = config.beta if beta is None else beta
    batch = tokens.shape[0]
    n_tokens = int((tokens[:, 1:] != PAD).sum())

    posterior = model.posterior(tokens)
    z = posterior.rsample()                                   # reparameterisation

    drop = None
    if model.training and config.latent_dropout > 0:
        drop = latent_dropout_mask(batch, config.latent_dropout, tokens.device)

    rec = -model.log_likelihood(tokens, z, drop_latent=drop).sum()
    kl = posterior.kl()                                       # (B, *units)
    floor = config.free_bits_nats
    kl_floored = free_bits_kl(kl, floor=floor, mode=config.free_bits_mode, present=posterior.present)

    if config.scale == "elbo":
        loss = (rec + beta * kl_floored) / n_tokens
    else:
        loss = rec / n_tokens + beta * upstream_kl_term(kl, floor=floor, mode=config.free_bits_mode)

    return Terms(loss, rec.detach(), kl.sum().detach(), kl_floored.detach(), n_tokens, batch, beta)
