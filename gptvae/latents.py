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

    q.present                        which units exist, (B, *units) bool, or None when all do
    q.unit_values(z)                 a sample as one number per latent unit, (..., B, U): what probes read

A model without a latent (the LM) has a posterior with zero units: a Gaussian in zero dimensions, for
which every formula gives the right answer (KL 0, log q 0, log p 0, MI 0) and nothing is drawn from
the RNG. Code asks `q.units` where a measure needs a latent; it never asks which family it has.

Two kinds of latent:

    DiagonalGaussian / StandardNormal   one continuous z per sequence (GPTVAE); z is (B, D)
    TokenBits / UniformBits             H independent bits at each of T positions (the Free Transformer);
                                        a sample is the code of each position, an integer in [0, 2^H)
                                        (bit h is (code >> h) & 1, as upstream's BinaryMapper), (B, T),
                                        and -1 where a sequence has ended: no latent there, so log q and
                                        log p skip it and the decoder receives nothing
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Protocol

import torch
import torch.nn.functional as F
from einops import einsum, rearrange, repeat
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
    present: Tensor | None

    def rsample(self) -> Tensor: ...
    def sample(self, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor: ...
    def log_prob(self, z: Tensor) -> Tensor: ...
    def kl(self) -> Tensor: ...
    def entropy(self) -> Tensor: ...
    def cross_log_prob(self, z: Tensor) -> Tensor: ...
    def unit_cross_log_prob(self, z: Tensor) -> Tensor: ...
    def unit_values(self, z: Tensor) -> Tensor: ...


class Prior(Protocol):
    units: int

    def sample(self, batch: int, length: int = 1, *, generator: torch.Generator | None = None, device=None) -> Tensor:
        """(B, ...) latents for sequences of `length` positions (a latent per sequence ignores it)."""
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

    @property
    def present(self) -> None:
        """Every dimension exists for every row."""
        return None

    def unit_values(self, z: Tensor) -> Tensor:
        return z

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

    def sample(self, batch: int, length: int = 1, *, generator: torch.Generator | None = None, device=None) -> Tensor:
        """(B, D): one z per sequence, whatever its length."""
        return sample_normal((batch, self.units), generator=generator, device=device)

    def log_prob(self, z: Tensor) -> Tensor:
        """log N(z; 0, I), summed over the last dim."""
        return -0.5 * (LOG_2PI + z.square()).sum(-1)


LOG_2 = math.log(2)
NO_LATENT = -1   # the code of a position with no latent (past the end of its sequence)


def code_bits(codes: Tensor, bits: int) -> Tensor:
    """Codes (...) -> their bits (..., H) as 0/1 integers, bit h = (code >> h) & 1 (upstream's order)."""
    powers = 2 ** torch.arange(bits, device=codes.device)
    return (codes.long().clamp(min=0).unsqueeze(-1) & powers) != 0


def code_one_hot(codes: Tensor, bits: int) -> Tensor:
    """Codes (...) -> one-hot (..., 2^H) float; a position with no latent (NO_LATENT) is all zeros."""
    codes = codes.long()
    return F.one_hot(codes.clamp(min=0), 2 ** bits).float() * (codes >= 0).unsqueeze(-1)


@dataclass
class TokenBits(Batched):
    """q(z|x) = prod_t prod_h Bernoulli(z_th; sigmoid(logits_th)) over the positions t that carry a latent.

    The Free Transformer's posterior (Fleuret 2025): H bits per position, independent given x. A row's
    latent units are its T * H (position, bit) pairs; the positions past its end (present = False) carry
    none, so they add nothing to any KL, log-probability or entropy. The prior is uniform (UniformBits).
    """

    logits: Tensor    # (B, T, H)
    present: Tensor   # (B, T) bool: the positions that carry a latent

    @property
    def bits(self) -> int:
        return self.logits.shape[-1]

    @property
    def units(self) -> int:
        return self.logits.shape[1] * self.logits.shape[2]

    @property
    def probs(self) -> Tensor:
        return self.logits.sigmoid()

    @property
    def mean(self) -> Tensor:
        """E_q[z_th | x] = sigmoid(logits_th) per unit, (B, T * H); NaN where the position has no latent."""
        probs = self.probs.masked_fill(~self.present.unsqueeze(-1), math.nan)
        return rearrange(probs, "b t h -> b (t h)")

    def to(self, *args, **kwargs):
        """dtype and device for the logits; `present` stays bool and follows the device."""
        logits = self.logits.to(*args, **kwargs)
        return TokenBits(logits, self.present.to(logits.device))

    @classmethod
    def cat(cls, parts):
        """Rows of different lengths: shorter ones padded with positions that carry no latent."""
        parts = list(parts)
        length = max(p.logits.shape[1] for p in parts)
        logits = [F.pad(p.logits, (0, 0, 0, length - p.logits.shape[1])) for p in parts]
        present = [F.pad(p.present, (0, length - p.present.shape[1]), value=False) for p in parts]
        return cls(torch.cat(logits), torch.cat(present))

    def rsample(self) -> Tensor:
        """One-hot codes (B, T, 2^H) with upstream's straight-through gradient, drawn as upstream's
        BinaryMapper draws them (torch.rand_like on the logits, bit = u <= p): the forward value is the
        sampled code, the gradient that of the code's probability soft_G = prod_h p_h^b_h (1 - p_h)^(1 - b_h)."""
        bits = self.bits
        powers = 2 ** torch.arange(bits, device=self.logits.device)
        codes = code_bits(torch.arange(2 ** bits, device=self.logits.device), bits).float()   # (C, H)
        sampled = (torch.rand_like(self.logits) <= self.logits.sigmoid()).long()
        one_hot = F.one_hot((powers * sampled).sum(-1), 2 ** bits).float()
        soft = (einsum(F.logsigmoid(self.logits), codes, "... h, c h -> ... c")
                + einsum(F.logsigmoid(-self.logits), 1.0 - codes, "... h, c h -> ... c")).exp()
        return (one_hot + soft - soft.detach()) * self.present.unsqueeze(-1)

    def sample(self, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Codes (S, B, T), NO_LATENT where there is no latent; one (B, T, H) slab of uniforms per sample."""
        probs = self.probs
        powers = 2 ** torch.arange(self.bits, device=probs.device)
        out = []
        for _ in range(num_samples):
            draw_device = generator.device if exists(generator) else probs.device
            u = torch.rand(probs.shape, generator=generator, device=draw_device, dtype=torch.float32).to(probs.device)
            codes = ((u <= probs).long() * powers).sum(-1)
            out.append(codes.masked_fill(~self.present, NO_LATENT))
        return torch.stack(out)

    def unit_values(self, z: Tensor) -> Tensor:
        """Codes (..., B, T) -> their bits as floats (..., B, T * H); NaN where the position has no latent."""
        on = code_bits(z, self.bits).to(self.logits.dtype)
        on = on.masked_fill(~((z >= 0) & self.present).unsqueeze(-1), math.nan)
        return rearrange(on, "... t h -> ... (t h)")

    def _bit_log_probs(self, z: Tensor) -> Tensor:
        """log q(z_th | x) per (position, bit) of codes z (..., B, T): (..., B, T, H), 0 where no latent."""
        on = code_bits(z, self.bits)
        log_p = torch.where(on, F.logsigmoid(self.logits), F.logsigmoid(-self.logits))
        return log_p * ((z >= 0) & self.present).unsqueeze(-1)

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z|x) of codes z (..., B, T), summed over positions and bits: (..., B)."""
        return self._bit_log_probs(z).sum((-1, -2))

    def kl(self) -> Tensor:
        """KL( Bernoulli(p_th) || Bernoulli(1/2) ) = log 2 - H_b(p_th) per unit, (B, T, H); 0 where no latent.
        Summed over the bits of a position it is upstream's `bits * log 2 - binary_entropy(logits)`."""
        p = self.probs
        kl = LOG_2 + p * F.logsigmoid(self.logits) + (1 - p) * F.logsigmoid(-self.logits)
        return kl * self.present.unsqueeze(-1)

    def entropy(self) -> Tensor:
        """H[q(z|x)] = sum over present positions and bits of the binary entropy, (B,)."""
        p = self.probs
        h = -(p * F.logsigmoid(self.logits) + (1 - p) * F.logsigmoid(-self.logits))
        return (h * self.present.unsqueeze(-1)).sum((-1, -2))

    def _require_one_length(self, what: str) -> None:
        if not bool(self.present.all()):
            raise ValueError(f"{what} compares latents across sequences position by position, which is defined "
                             "only when every sequence has the same length (the synthetic task); these differ")

    def cross_log_prob(self, z: Tensor) -> Tensor:
        """log q(z_i|x_j) for codes z (M, T) against every row j: (M, B). One matmul of the bits with
        logsigmoid(l) - logsigmoid(-l), plus sum logsigmoid(-l). Rows of one length only."""
        self._require_one_length("cross_log_prob (MI)")
        on = rearrange(code_bits(z, self.bits), "m t h -> m (t h)").to(self.logits.dtype)
        up, down = F.logsigmoid(self.logits), F.logsigmoid(-self.logits)
        return on @ rearrange(up - down, "b t h -> (t h) b") + rearrange(down, "b t h -> b (t h)").sum(-1)

    def unit_cross_log_prob(self, z: Tensor) -> Tensor:
        """log q(z_i,u | x_j) of each (position, bit) u alone, for codes z (M, T): (M, B, T * H)."""
        self._require_one_length("unit_cross_log_prob (per-unit MI)")
        on = rearrange(code_bits(z, self.bits), "m t h -> m 1 (t h)")
        up, down = (rearrange(F.logsigmoid(s * self.logits), "b t h -> 1 b (t h)") for s in (1, -1))
        return torch.where(on, up, down)


@dataclass(frozen=True)
class UniformBits:
    """p(z) uniform over the 2^H codes of every position that carries a latent: log p = -H log 2 each."""

    bits: int

    @property
    def units(self) -> int:
        return self.bits

    def sample(self, batch: int, length: int = 1, *, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Codes (B, T), uniform: each bit a fair coin."""
        draw_device = generator.device if exists(generator) else device
        codes = torch.randint(0, 2 ** self.bits, (batch, length), generator=generator, device=draw_device)
        return codes.to(device)

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) of codes z (..., B, T): -H log 2 per position that carries a latent, (...,B)."""
        dtype = z.dtype if z.is_floating_point() else torch.float32
        return -(self.bits * LOG_2) * (z >= 0).to(dtype).sum(-1)


def no_latent(batch: int, *, device=None) -> DiagonalGaussian:
    """The posterior of a model without a latent: zero units, so KL, log q and MI are all exactly 0."""
    empty = torch.zeros(batch, 0, device=device)
    return DiagonalGaussian(empty, empty)


__all__ = ["NO_LATENT", "DiagonalGaussian", "Posterior", "Prior", "StandardNormal", "TokenBits", "UniformBits",
           "code_bits", "code_one_hot", "no_latent", "sample_normal"]
