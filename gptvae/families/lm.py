"""The LM baseline: GPTVAE's decoder, built the same way, with no encoder and no latent slot.

Its latent has zero units (`gptvae.latents.no_latent`): the KL is 0, log q = log p = 0, and
log p(x|z) = log p(x) exactly, so the objective and every metric apply to it unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gptvae.config import ModelConfig
from gptvae.data import BOS, EOS, PAD
from gptvae.cross_entropy import sequence_log_prob
from gptvae.families.common import Example, keep_logits, layer_kwargs
from gptvae.latents import DiagonalGaussian, StandardNormal, no_latent


def check(config: ModelConfig) -> None:
    """Nothing beyond the shared checks: the encoder and latent fields are unused."""


class Model(nn.Module):
    def __init__(self, config: ModelConfig, *, num_tokens: int):
        from x_transformers import Decoder, TransformerWrapper   # here, so that checking a config stays light
        from x_transformers.autoregressive_wrapper import AutoregressiveWrapper

        super().__init__()
        self.config = config
        self.prior = StandardNormal(0)
        self.decoder = TransformerWrapper(
            num_tokens=num_tokens,
            max_seq_len=config.max_seq_len,
            attn_layers=Decoder(dim=config.dim, depth=config.depth, **layer_kwargs(config)),
        )
        self.ar_wrapped_decoder = AutoregressiveWrapper(self.decoder, ignore_index=PAD)

    def posterior(self, tokens: Tensor) -> DiagonalGaussian:
        return no_latent(tokens.shape[0], device=tokens.device)

    def log_likelihood(self, tokens: Tensor, z: Tensor | None = None, **_) -> Tensor:
        """Exact log p(x); a zero-unit z changes nothing, so it is accepted and ignored."""
        hidden = self.decoder(tokens[:, :-1], return_embeddings=True)
        return sequence_log_prob(hidden, self.decoder.to_logits.weight, tokens[:, 1:], ignore_index=PAD)

    @torch.no_grad()
    def generate(self, prompts: Tensor, *, max_new_tokens: int, temperature: float = 1.0,
                 filter_logits_fn=keep_logits, z=None, reference=None, prior: bool = False,
                 **generate_kwargs) -> Tensor:
        """Samples. z, reference and prior choose a latent of zero units: they condition on nothing."""
        return self.ar_wrapped_decoder.generate(
            prompts, max_new_tokens, eos_token=EOS, temperature=temperature,
            filter_logits_fn=filter_logits_fn, **generate_kwargs,
        )

    @torch.no_grad()
    def examples(self, reference: Tensor, *, num: int, max_new_tokens: int) -> list[Example]:
        prompts = torch.full((num, 1), BOS, dtype=torch.long, device=reference.device)
        return [Example("no latent", s) for s in self.generate(prompts, max_new_tokens=max_new_tokens)]
