"""x-transformers' GPTVAE: an encoder maps x to a diagonal Gaussian q(z|x); z becomes one token
prepended to an autoregressive decoder.

`self.net` IS the upstream module (same parameter names), so weights move freely between the two.
Latent dropout and the KL live in `gptvae.objective`, which reproduces upstream's forward exactly.
"""

from __future__ import annotations

import torch
from einops import repeat
from torch import Tensor, nn

from gptvae.config import ConfigError, ModelConfig
from gptvae.data import BOS, EOS, PAD
from gptvae.cross_entropy import sequence_log_prob
from gptvae.families.common import Example, exists, keep_logits, layer_kwargs
from gptvae.latents import DiagonalGaussian, StandardNormal


FREE_BITS_MODES = ("per_dim", "batch_dim", "total")   # one z per sequence: no per-token floor


def check(config: ModelConfig) -> None:
    if config.dim_latent < 1:
        raise ConfigError(f"model.dim_latent={config.dim_latent} is invalid for a VAE: the latent needs at least "
                          "1 dimension (use model.kind=lm for a model without a latent)")
    if config.enc_depth < 1:
        raise ConfigError(f"model.enc_depth={config.enc_depth} is invalid for a VAE; allowed: an integer >= 1")


class Model(nn.Module):
    """GPTVAE read through prior / posterior / log_likelihood / generate."""

    def __init__(self, config: ModelConfig, *, num_tokens: int):
        from x_transformers.gpt_vae import GPTVAE as UpstreamGPTVAE   # here, so that checking a config stays light

        super().__init__()
        self.config = config
        self.prior = StandardNormal(config.dim_latent)
        self.net = UpstreamGPTVAE(
            num_tokens=num_tokens,
            dim=config.dim,
            depth=config.depth,
            enc_depth=config.enc_depth,
            max_seq_len=config.max_seq_len,
            dim_latent=config.dim_latent,
            pad_id=PAD,                  # encoder mask and ignored targets
            latents_dropout_prob=0.0,    # applied by the objective, which also reports it
            **layer_kwargs(config),
        )

    @property
    def device(self) -> torch.device:
        return self.net.device

    def posterior(self, tokens: Tensor) -> DiagonalGaussian:
        """q(z|x) = N(mu, diag(exp(logvar))) from the masked mean-pooled encoder."""
        pooled = self.net.encoder(tokens, mask=tokens != PAD)
        mu, logvar = self.net.to_latent_mean_log_variance(pooled)
        return DiagonalGaussian(mu.float(), logvar.float())

    def log_likelihood(self, tokens: Tensor, z: Tensor | None = None, *, drop_latent: Tensor | None = None) -> Tensor:
        """log p(x|z) per sequence. z=None masks the latent slot: the exact LM path latent dropout trains.

        drop_latent: optional (B,) bool; True masks that sequence's latent slot (upstream's
        `seq_start_pos = 1`), exactly as upstream's latent dropout does during training.
        """
        batch = tokens.shape[0]
        if not exists(z):
            z = torch.zeros(batch, self.config.dim_latent, device=tokens.device)
            drop_latent = torch.ones(batch, dtype=torch.bool, device=tokens.device)

        prepend = self.net.from_latent_to_prepend_token(z)
        seq_start_pos = drop_latent.long() if exists(drop_latent) else None

        # feeding x[:-1] gives the same logits as upstream's x (causal), one position cheaper; the
        # output layer runs fused with the cross-entropy (gptvae.cross_entropy), on the scored positions
        hidden = self.net.decoder(tokens[:, :-1], prepend_embeds=prepend, seq_start_pos=seq_start_pos,
                                  return_embeddings=True)
        return sequence_log_prob(hidden[:, 1:], self.net.decoder.to_logits.weight, tokens[:, 1:], ignore_index=PAD)

    @torch.no_grad()
    def generate(
        self,
        prompts: Tensor,
        *,
        max_new_tokens: int,
        z: Tensor | None = None,           # condition on this latent, (B, D) or (D,)
        reference: Tensor | None = None,   # ... or on the posterior mean of these sequences
        prior: bool = False,               # ... or on a sample from the prior
        temperature: float = 1.0,
        filter_logits_fn=keep_logits,
        **generate_kwargs,
    ) -> Tensor:
        """Continue `prompts` (B, n), usually a column of BOS. With no latent given, the slot is absent:
        the unconditional LM path (identical to the masked slot under rotary embeddings)."""
        if sum((exists(z), exists(reference), prior)) > 1:
            raise ValueError("give at most one of z, reference, prior")
        batch = prompts.shape[0]
        if exists(reference):
            z = self.posterior(reference).mean
        elif prior:
            z = torch.randn(batch, self.config.dim_latent).to(self.device)
        if exists(z) and z.ndim == 1:
            z = repeat(z, "d -> b d", b=batch)

        was_training = self.training
        self.eval()
        out = self.net.generate(prompts, max_new_tokens, latents=z, eos_token=EOS, temperature=temperature,
                                filter_logits_fn=filter_logits_fn, **generate_kwargs)
        self.train(was_training)
        return out

    @torch.no_grad()
    def examples(self, reference: Tensor, *, num: int, max_new_tokens: int) -> list[Example]:
        """Prior samples, reconstructions of `reference` from their posterior means, a greedy
        interpolation between the first two posterior means, and samples with no latent."""
        prompts = torch.full((num, 1), BOS, dtype=torch.long, device=reference.device)
        out = [Example("prior", s) for s in self.generate(prompts, max_new_tokens=max_new_tokens, prior=True)]
        recon = self.generate(prompts[: len(reference)], max_new_tokens=max_new_tokens, reference=reference)
        out += [Example("reconstruction", b, source=a) for a, b in zip(reference, recon)]
        mu = self.posterior(reference[:2]).mean
        for t in torch.linspace(0, 1, 5).tolist():
            z = (1 - t) * mu[0] + t * mu[-1]
            text = self.generate(prompts[:1], max_new_tokens=max_new_tokens, z=z, temperature=0.0)[0]
            out.append(Example("interpolation", text, note=f"t={t:.2f}"))
        out += [Example("no latent", s) for s in self.generate(prompts, max_new_tokens=max_new_tokens)]
        return out
