"""Latent distributions: what a model family's `prior` and `posterior(x)` return.

The objective, the metrics, training and export are written against these objects, never against a
family. A posterior is a batch of distributions, one per sequence, with its leading dim the batch:

    q = model.posterior(tokens)
    q.rsample()                      reparameterised z (B, *event), from torch's global RNG (training)
    q.sample(S, generator=g)         z (S, B, *event), drawn one (B, *event) slab per sample
    q.log_prob(z)                    log q(z|x), (..., B)
    q.kl()                           exact KL(q || prior) per latent unit, (B, *units); sum for a sequence
    q.mean                           the per-unit posterior mean (B, U): what active units and probes read
    q.entropy()                      H[q(z|x)], (B,)
    q.cross_log_prob(z)              log q(z_i | x_j) for every z_i (M, *event) and every row j: (M, B)
    q.unit_cross_log_prob(z)         the same for each latent unit alone: (M, B, U)
    q[index], type(q).cat([...])     select and concatenate rows; q.to(dtype=..., device=...)

A model without a latent (the LM) has a posterior with zero units: a Gaussian in zero dimensions, for
which every formula gives the right answer (KL 0, log q 0, log p 0, MI 0) and nothing is drawn from
the RNG. Code asks `q.units` where a measure needs a latent; it never asks which family it has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Protocol

import torch
from einops import rearrange
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def exists(v):
    return v is not None


def sample_normal(shape, *, generator: torch.Generator | None = None, device=None) -> Tensor:
    """Standard normal noise drawn with `generator` on the generator's own device, then moved.

    A CPU generator therefore gives the same draws whether the model sits on CPU or GPU.
    """
    draw_device = generator.device if exists(generator) else device
    eps = torch.randn(shape, generator=generator, device=draw_device, dtype=torch.float32)
    return eps.to(device)


class Posterior(Protocol):
    units: int
    mean: Tensor

    def rsample(self) -> Tensor: ...
    def sample(self, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor: ...
    def log_prob(self, z: Tensor) -> Tensor: ...
    def kl(self) -> Tensor: ...
    def entropy(self) -> Tensor: ...
    def cross_log_prob(self, z: Tensor) -> Tensor: ...
    def unit_cross_log_prob(self, z: Tensor) -> Tensor: ...


class Prior(Protocol):
    units: int

    def sample(self, batch: int, *, generator: torch.Generator | None = None, device=None) -> Tensor: ...
    def log_prob(self, z: Tensor) -> Tensor: ...


class Batched:
    """Row selection, concatenation and dtype/device moves for a dataclass of (B, ...) tensors."""

    def _map(self, fn):
        return type(self)(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def __len__(self) -> int:
        return getattr(self, fields(self)[0].name).shape[0]

    def __getitem__(self, index):
        return self._map(lambda t: t[index])

    def to(self, *args, **kwargs):
        return self._map(lambda t: t.to(*args, **kwargs))

    @classmethod
    def cat(cls, parts):
        parts = list(parts)
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)})


@dataclass
class DiagonalGaussian(Batched):
    """q(z|x) = N(mu, diag(exp(logvar))) per row; the prior it is measured against is N(0, I)."""

    mu: Tensor        # (B, D)
    logvar: Tensor    # (B, D)

    @property
    def units(self) -> int:
        return self.mu.shape[-1]

    @property
    def mean(self) -> Tensor:
        return self.mu

    def rsample(self) -> Tensor:
        return self.mu + (0.5 * self.logvar).exp() * torch.randn_like(self.mu)

    def sample(self, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        """(S, B, D). One (B, D) slab per sample, so the draws do not depend on later chunking."""
        eps = torch.stack([sample_normal(self.mu.shape, generator=generator, device=self.mu.device)
                           for _ in range(num_samples)])
        return self.mu + eps.to(self.mu.dtype) * (0.5 * self.logvar).exp()

    def log_prob(self, z: Tensor) -> Tensor:
        """log N(z; mu, diag(exp(logvar))), summed over D. z: (..., B, D) -> (..., B)."""
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mu).square() * torch.exp(-self.logvar)).sum(-1)

    def kl(self) -> Tensor:
        """KL_d( N(mu_d, exp(logvar_d)) || N(0, 1) ), (B, D). REFERENCE section 2."""
        return 0.5 * (self.logvar.exp() + self.mu.square() - self.logvar - 1.0)

    def entropy(self) -> Tensor:
        """H[q] = D/2 log(2 pi) + 1/2 sum_d (1 + logvar_d), (B,)."""
        return 0.5 * (LOG_2PI + 1.0 + self.logvar).sum(-1)

    def cross_log_prob(self, z: Tensor) -> Tensor:
        """log q(z_i|x_j) for z (M, D) against all B rows: (M, B), without building (M, B, D).

        log q(z_i|x_j) = sum_d [-1/2 z_id^2 / var_jd + z_id mu_jd / var_jd] + c_j is one matmul of
        [z^2, z, 1] with [-1/2 / var, mu / var, c]. Use float64: the expansion cancels large terms
        once variances are small, which float32 would not survive.
        """
        inv_var = torch.exp(-self.logvar)                                                  # (B, D)
        const = -0.5 * (self.units * LOG_2PI + self.logvar.sum(-1) + (self.mu.square() * inv_var).sum(-1))
        rhs = torch.cat([-0.5 * inv_var, self.mu * inv_var, rearrange(const, "b -> b 1")], dim=-1)  # (B, 2D+1)
        lhs = torch.cat([z.square(), z, torch.ones_like(z[:, :1])], dim=-1)                 # (M, 2D+1)
        return lhs @ rhs.T

    def unit_cross_log_prob(self, z: Tensor) -> Tensor:
        """log q(z_iu | x_j) of each unit u alone, for z (M, D) against all B rows: (M, B, D). Direct,
        with no expansion to cancel: one dimension at a time, float32 holds it."""
        diff = rearrange(z, "m d -> m 1 d") - self.mu
        return -0.5 * (LOG_2PI + self.logvar + diff.square() * torch.exp(-self.logvar))


@dataclass(frozen=True)
class StandardNormal:
    """p(z) = N(0, I_D)."""

    units: int

    def sample(self, batch: int, *, generator: torch.Generator | None = None, device=None) -> Tensor:
        return sample_normal((batch, self.units), generator=generator, device=device)

    def log_prob(self, z: Tensor) -> Tensor:
        """log N(z; 0, I), summed over the last dim."""
        return -0.5 * (LOG_2PI + z.square()).sum(-1)


def no_latent(batch: int, *, device=None) -> DiagonalGaussian:
    """The posterior of a model without a latent: zero units, so KL, log q and MI are all exactly 0."""
    empty = torch.zeros(batch, 0, device=device)
    return DiagonalGaussian(empty, empty)


__all__ = ["DiagonalGaussian", "Posterior", "Prior", "StandardNormal", "no_latent", "sample_normal"]
