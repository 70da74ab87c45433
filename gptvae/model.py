"""The models: x-transformers' GPTVAE, and the same decoder without a latent (the LM baseline).

Both expose one small interface, which the objective, the metrics and the notebooks use:

    posterior(tokens)          -> (mu, logvar), each (B, D)             [VAE only]
    log_likelihood(tokens, z)  -> (B,) log p(x|z), nats, summed over the predicted tokens
    generate(prompts, ...)     -> (B, n) sampled continuations

Sequences are `BOS w_1 ... w_n EOS`, right-padded with PAD. The decoder predicts x[1:] from x[:-1]
(REFERENCE 1.1), so the predicted tokens are the words plus EOS and BOS is context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn
from x_transformers import Decoder, TransformerWrapper
from x_transformers.autoregressive_wrapper import AutoregressiveWrapper
from x_transformers.gpt_vae import GPTVAE as UpstreamGPTVAE

from gptvae.data import EOS, PAD

MODEL_KINDS = ("vae", "lm")


def exists(v):
    return v is not None


def default(v, d):
    return v if exists(v) else d


def keep_logits(logits, **kwargs):
    """Sample from the model's own distribution (upstream's default truncates to the top 10%)."""
    return logits


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "vae"            # "vae": GPTVAE; "lm": the same decoder with no latent (baseline row)
    dim: int = 256               # width of encoder and decoder
    depth: int = 4               # decoder layers
    enc_depth: int = 2           # encoder layers (mean-pooled into q(z|x))
    heads: int = 4
    attn_dim_head: int = 64
    dim_latent: int = 32         # D, the size of z
    max_seq_len: int = 128       # longest sequence the decoder sees, BOS and EOS included
    rotary_pos_emb: bool = True  # REFERENCE 1.3: a dropped latent must not shift absolute positions
    dropout: float = 0.0         # attention and feed-forward dropout

    def validate(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model.kind={self.kind!r} is unknown; allowed: {', '.join(MODEL_KINDS)}")
        if self.kind == "vae" and self.dim_latent < 1:
            raise ValueError(
                f"model.dim_latent={self.dim_latent} is invalid for a VAE: the latent needs at least 1 "
                "dimension (use model.kind=lm for a model without a latent)"
            )
        for name in ("dim", "depth", "heads", "attn_dim_head", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}={getattr(self, name)} must be a positive integer")
        if self.kind == "vae" and self.enc_depth < 1:
            raise ValueError(f"model.enc_depth={self.enc_depth} must be a positive integer for a VAE")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout={self.dropout} must be in [0, 1)")


def layer_kwargs(config: ModelConfig) -> dict:
    """What upstream passes to its Encoder and Decoder; the LM baseline's Decoder gets exactly the same."""
    return dict(attn_dim_head=config.attn_dim_head, heads=config.heads, rotary_pos_emb=config.rotary_pos_emb,
                attn_dropout=config.dropout, ff_dropout=config.dropout)


def sequence_log_prob(logits: Tensor, target: Tensor) -> Tensor:
    """Sum of log p(target_t) over the non-PAD targets of each row. Always in float32."""
    # (B*n, C) keeps the softmax over a contiguous last dim: several times faster on CPU than (B, C, n)
    nll = F.cross_entropy(rearrange(logits.float(), "b n c -> (b n) c"), rearrange(target, "b n -> (b n)"),
                          ignore_index=PAD, reduction="none")
    return -rearrange(nll, "(b n) -> b n", b=target.shape[0]).sum(dim=-1)


class GPTVAE(nn.Module):
    """x-transformers' GPTVAE, read through posterior / log_likelihood / generate.

    `self.net` IS the upstream module (same parameter names), so weights move freely between the two.
    Latent dropout and the KL live in `gptvae.objective`, which reproduces upstream's forward exactly.
    """

    has_latent = True

    def __init__(self, config: ModelConfig, *, num_tokens: int):
        super().__init__()
        config.validate()
        self.config = config
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
    def dim_latent(self) -> int:
        return self.config.dim_latent

    def posterior(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x) = N(mu, diag(exp(logvar))) from the masked mean-pooled encoder."""
        pooled = self.net.encoder(tokens, mask=tokens != PAD)
        mu, logvar = self.net.to_latent_mean_log_variance(pooled)
        return mu.float(), logvar.float()

    def log_likelihood(self, tokens: Tensor, z: Tensor | None = None, *, drop_latent: Tensor | None = None) -> Tensor:
        """log p(x|z) per sequence. z=None masks the latent slot: the exact LM path latent dropout trains.

        drop_latent: optional (B,) bool; True masks that sequence's latent slot (upstream's
        `seq_start_pos = 1`), exactly as upstream's latent dropout does during training.
        """
        batch = tokens.shape[0]
        if not exists(z):
            z = torch.zeros(batch, self.dim_latent, device=tokens.device)
            drop_latent = torch.ones(batch, dtype=torch.bool, device=tokens.device)

        prepend = self.net.from_latent_to_prepend_token(z)
        seq_start_pos = drop_latent.long() if exists(drop_latent) else None

        # feeding x[:-1] gives the same logits as upstream's x (causal), one position cheaper
        logits = self.net.decoder(tokens[:, :-1], prepend_embeds=prepend, seq_start_pos=seq_start_pos)
        return sequence_log_prob(logits[:, 1:], tokens[:, 1:])

    @torch.no_grad()
    def sample_latent(self, batch: int, *, generator: torch.Generator | None = None) -> Tensor:
        """z ~ p(z) = N(0, I)."""
        return torch.randn(batch, self.dim_latent, generator=generator).to(self.net.device)

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
            z, _ = self.posterior(reference)
        elif prior:
            z = self.sample_latent(batch)
        if exists(z) and z.ndim == 1:
            z = repeat(z, "d -> b d", b=batch)

        was_training = self.training
        self.eval()
        out = self.net.generate(
            prompts,
            max_new_tokens,
            latents=z,
            eos_token=EOS,
            temperature=temperature,
            filter_logits_fn=filter_logits_fn,
            **generate_kwargs,
        )
        self.train(was_training)
        return out


class GPT(nn.Module):
    """The LM baseline: GPTVAE's decoder, built the same way, with no encoder and no latent slot."""

    has_latent = False

    def __init__(self, config: ModelConfig, *, num_tokens: int):
        super().__init__()
        config.validate()
        self.config = config
        self.decoder = TransformerWrapper(
            num_tokens=num_tokens,
            max_seq_len=config.max_seq_len,
            attn_layers=Decoder(dim=config.dim, depth=config.depth, **layer_kwargs(config)),
        )
        self.ar_wrapped_decoder = AutoregressiveWrapper(self.decoder, ignore_index=PAD)

    def log_likelihood(self, tokens: Tensor, z: Tensor | None = None, **_) -> Tensor:
        """Exact log p(x); z is accepted and ignored so that the two models share one interface."""
        logits = self.decoder(tokens[:, :-1])
        return sequence_log_prob(logits, tokens[:, 1:])

    @torch.no_grad()
    def generate(self, prompts: Tensor, *, max_new_tokens: int, temperature: float = 1.0,
                 filter_logits_fn=keep_logits, **generate_kwargs) -> Tensor:
        return self.ar_wrapped_decoder.generate(
            prompts, max_new_tokens, eos_token=EOS, temperature=temperature,
            filter_logits_fn=filter_logits_fn, **generate_kwargs,
        )


def build_model(config: ModelConfig, *, num_tokens: int) -> GPTVAE | GPT:
    config.validate()
    return (GPTVAE if config.kind == "vae" else GPT)(config, num_tokens=num_tokens)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
