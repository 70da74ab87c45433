"""Model families. A family is one module in this folder plus one entry in FAMILIES.

A family module defines

    check(config: ModelConfig) -> None   what only this family needs of its config (raise ConfigError)
    Model(config, *, num_tokens)         an nn.Module with the interface below

    model.prior                          a latent distribution: sample(batch, generator=...), log_prob(z), units
    model.posterior(tokens)              q(z|x), a gptvae.latents posterior (zero units when there is no latent)
    model.log_likelihood(tokens, z)      (B,) log p(x|z) in nats over the predicted tokens; z=None masks the latent
    model.generate(prompts, ...)         continuations; z=, reference= or prior=True choose the latent
    model.examples(reference, ...)       what is worth reading of this family, as gptvae.latents-free Examples

and optionally

    FREE_BITS_MODES                      the objective's floors that make sense for its latent (default: all)
    model.log_likelihood_samples(tokens, z)  (S, B) for S latents per sequence, z (S, B, ...), where the family
                                         can share work that does not read z (default: x repeated S times)

Sequences are `BOS w_1 ... w_n EOS`, right-padded with PAD; the predicted tokens are the words and EOS.
This file imports no torch: the config reads the registry, and a family is imported only when used.
"""

from __future__ import annotations

import importlib

FAMILIES = {
    "vae": "gptvae.families.gptvae",   # x-transformers' GPTVAE: a Gaussian z prepended as one token
    "lm": "gptvae.families.lm",        # the same decoder with no latent: every sweep's baseline row
    "freetransformer": "gptvae.families.freetransformer",   # Fleuret 2025: H bits per token, mid-decoder
}
BASELINE = "lm"                        # the family of a sweep's baseline row
BASELINE_NAME = "LM baseline"          # its run name, "LM baseline seed=<n>": a spec whose own grid is of LMs
                                       # (a budget probe) has rows of this family that are settings, not the baseline


def family(name: str):
    """The module of family `name` (imported on first use)."""
    return importlib.import_module(FAMILIES[name])


def check_family_config(config) -> None:
    family(config.kind).check(config)


def free_bits_modes(kind: str) -> tuple[str, ...]:
    """The free-bits modes family `kind` accepts."""
    from gptvae.config import FREE_BITS_MODES

    return tuple(getattr(family(kind), "FREE_BITS_MODES", FREE_BITS_MODES))


def build_model(config, *, num_tokens: int):
    config.validate()
    return family(config.kind).Model(config, num_tokens=num_tokens)


def num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["BASELINE", "BASELINE_NAME", "FAMILIES", "build_model", "check_family_config", "family", "free_bits_modes", "num_parameters"]
