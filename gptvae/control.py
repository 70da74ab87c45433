"""What the latent controls on the synthetic task (Fleuret 2025, section 4.1), measured as rates.

Fleuret's evidence is pictures: samples that share one latent beside samples that do not. Here the same
comparison is counted. Samples are drawn in groups that share one draw Z of the whole latent from the
prior, and as many samples again with a Z each; for every pair within a group, and for as many pairs of
samples with independent Zs, we ask whether two well-formed samples agree on

    position   the start of the run of letters: some start is consistent with both ("!" a wildcard)
    letter     the letter
    noise      the "!" columns: of the columns where either has a "!", the share where both do (Jaccard)

Each rate is reported for shared Z, for independent Z, and by chance: the same rate between independent
texts of the task itself. A latent that encodes the position lifts the shared-Z position rate above the
other two; one that also encodes the noise lifts the noise rate. `well_formed` is the share of all
samples the task could have produced (finite exact likelihood). Works for any family: a GPTVAE's Z is
one Gaussian draw, a Free Transformer's a uniform code at every position.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import torch

from gptvae.data import BOS, SYN_TEXT_LEN, SyntheticReading, read_synthetic, synthetic_sample
from gptvae.device import model_device

MEASURES = ("position", "letter", "noise")
CHANCE_TEXTS = 20_000   # task texts, in pairs, behind the chance rates
CHANCE_SEED = 12_345


def pair_rates(groups: list[list[SyntheticReading]]) -> tuple[dict[str, float], int]:
    """Each measure's mean over every pair of well-formed readings within a group, and the number of pairs."""
    scores = {name: [] for name in MEASURES}
    for group in groups:
        for a, b in itertools.combinations([r for r in group if r.well_formed], 2):
            scores["position"].append(float(bool(a.positions & b.positions)))
            scores["letter"].append(float(a.letter == b.letter))
            union = a.noise | b.noise
            scores["noise"].append(len(a.noise & b.noise) / len(union) if union else 1.0)
    pairs = len(scores["position"])
    return {name: float(np.mean(v)) if v else float("nan") for name, v in scores.items()}, pairs


@functools.cache
def chance_rates() -> dict[str, float]:
    """The rates between independent texts of the task: what no latent at all gives."""
    texts, _, _ = synthetic_sample(CHANCE_TEXTS, seed=CHANCE_SEED)
    readings = [read_synthetic(t) for t in texts]
    return pair_rates([readings[i:i + 2] for i in range(0, len(readings), 2)])[0]


@torch.no_grad()
def latent_control(model, vocab, *, groups: int = 64, per_group: int = 4, seed: int = 0) -> dict[str, float]:
    """control_<measure>_{shared,independent,chance}, control_well_formed, control_pairs_*: see the module.
    `groups` draws of Z with `per_group` samples each, and groups * per_group samples with a Z each. A rate
    with no pair of well-formed samples behind it is left out (it prints as n/a), never logged as NaN."""
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    prompts = torch.full((per_group, 1), BOS, dtype=torch.long, device=device)
    steps = SYN_TEXT_LEN + 1   # the text and its EOS

    def read(batch) -> list[SyntheticReading]:
        return [read_synthetic(vocab.decode(row)) for row in batch]

    shared, independent = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)   # the decoder's sampling
        for _ in range(groups):
            z = model.prior.sample(1, steps + 1, generator=generator, device=device)[0]
            shared.append(read(model.generate(prompts, max_new_tokens=steps, z=z)))
            independent.append(read(model.generate(prompts, max_new_tokens=steps, prior=True)))
    out = {}
    rates, pairs = pair_rates(shared)
    other, other_pairs = pair_rates(independent)
    for name, value in chance_rates().items():   # a rate over no pair of well-formed samples is absent (n/a)
        if pairs:
            out[f"control_{name}_shared"] = rates[name]
        if other_pairs:
            out[f"control_{name}_independent"] = other[name]
        out[f"control_{name}_chance"] = value
    every = [r for group in shared + independent for r in group]
    out["control_well_formed"] = float(np.mean([r.well_formed for r in every]))
    out["control_pairs_shared"], out["control_pairs_independent"] = float(pairs), float(other_pairs)
    return out


__all__ = ["MEASURES", "chance_rates", "latent_control", "pair_rates"]
