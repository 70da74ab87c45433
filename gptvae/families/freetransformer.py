"""The Free Transformer (Fleuret 2025, arXiv 2510.17558): H bits of latent per token, injected mid-decoder.

    x -> decoder head (the first head_depth blocks, causal)
      -> one non-causal encoder block: a learned query per position cross-attends to the head's output
      -> H bit logits per position: q(z_t|x) = prod_h Bernoulli(sigmoid(l_th))     (gptvae.latents.TokenBits)
      -> the sampled code z_t in [0, 2^H), one-hot, Linear(2^H, dim)
      -> added to the keys and values of the first block of the decoder tail -> logits

`self.net` IS x-transformers' `FreeTransformer` (same parameter names, its Encoder, Decoders and
BinaryMapper's bit order), so weights move freely between the two; only the bit logits are read out
here instead of a sampled one-hot, so that the objective and the metrics see the distribution. The prior
is uniform over the 2^H codes of every position (`UniformBits`), and the objective's `per_token` floor
is upstream's max(KL_t, kappa) per position, on the ELBO scale (`gptvae.objective`).

Where this departs from upstream (README, "The Free Transformer"):
- a position carries a latent where the sequence predicts a token (tokens[:, 1:] != PAD), and the
  encoder reads exactly those positions. Upstream also draws (and charges KL for) latents at padded
  positions, and its encoder reads the trailing EOS of every row but the longest, so a latent there
  depends on the other rows of the batch. With no padding the two agree exactly (tests/test_families.py).
- generation draws z_t from the uniform prior at every position, as the paper does. Upstream's
  `generate()` without latents conditions on nothing, and with latents repeats one code at every position.
- latent dropout drops a whole sequence's latent (the objective's, shared with GPTVAE). Upstream's is
  nn.Dropout on the one-hot, which also rescales the codes it keeps by 1 / (1 - p).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from gptvae.config import ConfigError, ModelConfig
from gptvae.cross_entropy import sequence_log_prob
from gptvae.data import BOS, EOS, PAD
from gptvae.families.common import Example, exists, keep_logits
from gptvae.latents import NO_LATENT, TokenBits, UniformBits, code_one_hot

FREE_BITS_MODES = ("per_token", "total")   # kappa per position (the paper), or one floor per sequence


def head_depth(config: ModelConfig) -> int:
    return config.depth // 2 if config.head_depth is None else config.head_depth


def check(config: ModelConfig) -> None:
    if config.depth - head_depth(config) < 1:
        raise ConfigError(f"model.head_depth={head_depth(config)} leaves no decoder block after the latent "
                          f"(model.depth={config.depth}); allowed: 0 <= head_depth < depth")
    if config.enc_depth < 1:
        raise ConfigError(f"model.enc_depth={config.enc_depth} is invalid for the Free Transformer; allowed: an "
                          "integer >= 1 (the paper uses one non-causal block)")


class Model(nn.Module):
    """FreeTransformer read through prior / posterior / log_likelihood / generate."""

    def __init__(self, config: ModelConfig, *, num_tokens: int):
        from x_transformers.free_transformer import FreeTransformer   # here, so that checking a config stays light

        super().__init__()
        self.config = config
        self.bits = config.latent_bits
        self.prior = UniformBits(config.latent_bits)
        self.net = FreeTransformer(
            num_tokens=num_tokens,
            dim=config.dim,
            dec_head_depth=head_depth(config),
            dec_tail_depth=config.depth - head_depth(config),
            max_seq_len=config.max_seq_len,
            enc_depth=config.enc_depth,
            attn_dim_head=config.attn_dim_head,
            heads=config.heads,
            latent_bits=config.latent_bits,
            per_token_latents=config.per_token_latents,
            kl_loss_threshold=0.0,      # the floor lives in the objective
            latent_dropout_prob=0.0,    # applied by the objective, per sequence
            pad_id=PAD,
            attn_dropout=config.dropout,
            ff_dropout=config.dropout,
        )
        self._head_memo = None   # (tokens, head output) from posterior(), reused once by log_likelihood()

    @property
    def device(self) -> torch.device:
        return self.net.device

    def _head(self, tokens: Tensor) -> Tensor:
        """The decoder head on the input positions tokens[:, :-1] (the embeddings when head_depth is 0)."""
        memo, self._head_memo = self._head_memo, None
        if exists(memo) and memo[0] is tokens:
            return memo[1]
        x = self.net.token_emb(tokens[:, :-1])
        return self.net.decoder_head(x) if exists(self.net.decoder_head) else x

    def posterior(self, tokens: Tensor) -> TokenBits:
        """q(z|x): bit logits at every position that predicts a token (one row of them when
        per_token_latents is off), from the encoder's learned queries over the decoder head."""
        head = self._head(tokens)
        self._head_memo = (tokens, head)   # the same head feeds the tail in log_likelihood(tokens, z)
        present = tokens[:, 1:] != PAD
        batch, length = present.shape
        query = repeat(self.net.query_token_for_latents, "d -> b n d", b=batch,
                       n=length if self.config.per_token_latents else 1)
        kwargs = {}
        if self.config.per_token_latents:
            positions = torch.arange(length, device=tokens.device)
            kwargs = dict(pos=positions, context_pos=positions)
        pooled = self.net.encoder(query, context=head, context_mask=present, **kwargs)
        logits = self.net.to_latent_bit_logits(pooled).float()
        if not self.config.per_token_latents:
            present = torch.ones(batch, 1, dtype=torch.bool, device=tokens.device)
        return TokenBits(logits, present)

    def condition(self, z: Tensor, length: int) -> Tensor:
        """What enters the tail's first block: Linear(2^H, dim) of the one-hot codes, (B, length, dim).
        z: codes (B, T) (NO_LATENT: nothing), or one-hot (B, T, 2^H) as the objective's rsample gives."""
        one_hot = z if z.is_floating_point() else code_one_hot(z, self.bits)
        condition = self.net.from_latent_to_condition(one_hot.to(self.net.from_latent_to_condition.weight.dtype))
        if condition.shape[1] == 1:   # one latent for the sequence: every position receives it
            return condition.expand(-1, length, -1)
        return condition[:, :length]

    def log_likelihood(self, tokens: Tensor, z: Tensor | None = None, *, drop_latent: Tensor | None = None) -> Tensor:
        """log p(x|z) per sequence. z=None decodes with no latent (the tail's first block gets nothing).

        drop_latent: optional (B,) bool; True decodes that sequence with no latent (latent dropout)."""
        return self._tail_log_likelihood(self._head(tokens), tokens[:, 1:], z, drop_latent=drop_latent)

    def log_likelihood_samples(self, tokens: Tensor, z: Tensor) -> Tensor:
        """log p(x|z_s) for S codes per sequence, z (S, B, T): (S, B). The head reads only x, so it runs once
        for the B sequences and the tail runs for all S * B (x, z_s) pairs (`gptvae.metrics` uses this)."""
        num_samples = z.shape[0]
        head = repeat(self._head(tokens), "b n d -> (s b) n d", s=num_samples)
        targets = repeat(tokens[:, 1:], "b n -> (s b) n", s=num_samples)
        ll = self._tail_log_likelihood(head, targets, rearrange(z, "s b ... -> (s b) ..."))
        return rearrange(ll, "(s b) -> s b", s=num_samples)

    def _tail_log_likelihood(self, head: Tensor, targets: Tensor, z: Tensor | None, *,
                             drop_latent: Tensor | None = None) -> Tensor:
        condition = None
        if exists(z):
            condition = self.condition(z, head.shape[1])
            if exists(drop_latent):
                condition = condition * (~drop_latent).to(condition.dtype)[:, None, None]
        hidden = self.net.decoder_tail(head, self_attn_kv_residuals=condition)
        return sequence_log_prob(hidden, self.net.token_unembed.weight, targets, ignore_index=PAD)

    def latents(self, batch: int, length: int, *, z: Tensor | None = None, reference: Tensor | None = None,
                prior: bool = False, generator: torch.Generator | None = None) -> Tensor | None:
        """Codes (B, length) to generate with (length 1 for a per-sequence latent): z as given, per position
        ((T,) for every row, or (B, T)), the posterior mode of `reference` (each bit p > 1/2; one reference
        per row), or the uniform prior. Positions beyond those given (or NO_LATENT in them) are drawn from the prior.
        None: no latent at all."""
        if sum((exists(z), exists(reference), prior)) > 1:
            raise ValueError("give at most one of z, reference, prior")
        if not (exists(z) or exists(reference) or prior):
            return None
        length = length if self.config.per_token_latents else 1
        codes = self.prior.sample(batch, length, generator=generator, device=self.device)
        if exists(reference):   # the most probable code at each position: what the posterior mean is to GPTVAE
            q = self.posterior(reference)
            z = ((q.logits > 0).long() * 2 ** torch.arange(self.bits, device=self.device)).sum(-1)
            z = z.masked_fill(~q.present, NO_LATENT)
        if exists(z):
            z = torch.as_tensor(z, device=self.device).long()
            z = repeat(z, "t -> b t", b=batch) if z.ndim == 1 else z
            given = min(length, z.shape[1])
            codes[:, :given] = torch.where(z[:, :given] >= 0, z[:, :given], codes[:, :given])
        return codes

    @torch.no_grad()
    def generate(
        self,
        prompts: Tensor,
        *,
        max_new_tokens: int,
        z: Tensor | None = None,           # codes to condition on, per position: (T,) for every row, or (B, T)
        reference: Tensor | None = None,   # ... or the posterior mode of these sequences
        prior: bool = False,               # ... or z_t from the uniform prior at every position (the paper)
        temperature: float = 1.0,
        filter_logits_fn=keep_logits,
        generator: torch.Generator | None = None,
        use_cache: bool = True,            # upstream's KV cache for head and tail; False re-runs every prefix
    ) -> Tensor:
        """Continue `prompts` (B, n), usually a column of BOS; the generated tokens (B, <= max_new_tokens),
        PAD after each row's EOS. With no latent given the tail's first block receives nothing (upstream's
        `generate()` without latents).

        The codes are drawn before the first step, so the latent at position t is fixed when t is first
        read: under the KV cache each step adds only the newest position's condition to its key and value."""
        batch, start = prompts.shape
        codes = self.latents(batch, start + max_new_tokens, z=z, reference=reference, prior=prior, generator=generator)
        was_training = self.training
        self.eval()
        out = prompts
        done = torch.zeros(batch, dtype=torch.bool, device=prompts.device)
        head_cache = tail_cache = None
        for _ in range(max_new_tokens):
            x = self.net.token_emb(out)   # the decoders keep only the newest position once they hold a cache
            head = x
            if exists(self.net.decoder_head):
                head, head_cache = self.net.decoder_head(x, cache=head_cache if use_cache else None, return_hiddens=True)
            condition = self.condition(codes, out.shape[1]) if exists(codes) else None
            if exists(condition) and use_cache and exists(tail_cache):
                condition = condition[:, -1:]
            hidden, tail_cache = self.net.decoder_tail(head, cache=tail_cache if use_cache else None,
                                                       self_attn_kv_residuals=condition, return_hiddens=True)
            logits = filter_logits_fn(self.net.token_unembed(hidden[:, -1]).float())
            if temperature == 0:
                token = logits.argmax(-1)
            else:
                probs = (logits / temperature).softmax(-1)
                token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            token = token.masked_fill(done, PAD)
            out = torch.cat([out, token[:, None]], dim=1)
            done |= token == EOS
            if done.all():
                break
        self.train(was_training)
        return F.pad(out[:, start:], (0, start + max_new_tokens - out.shape[1]), value=PAD)

    @torch.no_grad()
    def examples(self, reference: Tensor, *, num: int, max_new_tokens: int) -> list[Example]:
        """Samples with z_t from the prior (the paper's generation), reconstructions of `reference` from its
        posterior mode, samples that share one prior draw of the whole latent, and samples with no latent."""
        prompts = torch.full((num, 1), BOS, dtype=torch.long, device=reference.device)
        out = [Example("prior", s) for s in self.generate(prompts, max_new_tokens=max_new_tokens, prior=True)]
        recon = self.generate(prompts[: len(reference)], max_new_tokens=max_new_tokens, reference=reference)
        out += [Example("reconstruction", b, source=a) for a, b in zip(reference, recon)]
        shared = self.latents(1, 1 + max_new_tokens, prior=True)[0]
        out += [Example("one latent", s, note="the same z for every sample")
                for s in self.generate(prompts[: min(num, 4)], max_new_tokens=max_new_tokens, z=shared)]
        out += [Example("no latent", s) for s in self.generate(prompts, max_new_tokens=max_new_tokens)]
        return out
