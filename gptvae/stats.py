"""Paired statistics over seeds and sentences, and the words the paper may use for them.

A comparison of two settings is a paired difference: for each seed, both settings were trained from
that seed and evaluated on the same sentences, so the difference is taken seed by seed and sentence
by sentence, and the shared seed effect and the sentences' own difficulty cancel. Its interval comes
from a two-level bootstrap: resample the seeds, then within each the sentences, and recompute.

    a = {seed: per-sentence frame of setting A}     # gptvae.results.load_sentences
    b = {seed: per-sentence frame of the reference}
    diff = paired(a, b, "iw_nll", per_token=True)    # Interval(estimate, low, high, seeds, sentences)
    verdict(diff, margin=0.005)                      # "costs" | "buys" | "ties" | "not resolved"

Everything is seeded, so the same files give the same intervals, byte for byte.

With three seeds, resampling seeds sees only three values of the seed effect: the intervals are
optimistic about the seeds. The paper says so where it prints them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

LEVEL = 0.95      # every interval is a 95% interval
DRAWS = 2_000     # bootstrap draws
SEED = 0          # the bootstrap's own seed: fixed, so intervals are reproducible


@dataclass(frozen=True)
class Interval:
    """An estimate and its 95% interval, with what it was computed from."""

    estimate: float
    low: float
    high: float
    seeds: int
    sentences: int      # per seed (0 for a quantity measured once per run)

    def format(self, digits: int = 3, *, signed: bool = False) -> str:
        """'0.019 [0.015, 0.023]'; signed puts + on positive estimates (differences)."""
        sign = "+" if signed else ""
        if math.isnan(self.low):
            return f"{self.estimate:{sign}.{digits}f}"
        return f"{self.estimate:{sign}.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _aligned(a: dict[int, pd.DataFrame], b: dict[int, pd.DataFrame] | None, column: str, seeds: list[int]
             ) -> tuple[np.ndarray, np.ndarray]:
    """(differences, tokens), both (seeds, sentences): a - b (a alone when b is None) on the sentences
    every frame holds, in one order, so that a resampled sentence is the same sentence in every seed."""
    frames = [a[s] for s in seeds] + ([b[s] for s in seeds] if b is not None else [])
    common = set(frames[0]["sentence"])
    for frame in frames[1:]:
        common &= set(frame["sentence"])
    if not common:
        raise ValueError(f"no sentence in common: the runs were evaluated on different sentences ({column})")
    order = np.array(sorted(common))

    def column_of(frame, name):
        return frame.set_index("sentence").loc[order, name].to_numpy(np.float64)

    diff = np.stack([column_of(a[s], column) - (column_of(b[s], column) if b is not None else 0.0) for s in seeds])
    tokens = np.stack([column_of(a[s], "tokens") for s in seeds])
    return diff, tokens


def paired(a: dict[int, pd.DataFrame], b: dict[int, pd.DataFrame] | None, column: str, *, per_token: bool,
           draws: int = DRAWS, seed: int = SEED) -> Interval:
    """Mean over seeds of the per-seed statistic of a - b (of a alone when b is None), with a 95%
    percentile interval from a two-level bootstrap: each draw resamples the seeds, and the sentences
    once for all seeds (every run is scored on the same sentences, so a sentence's own difficulty is
    shared by the seeds and must be resampled as one).

    The per-seed statistic is sum(a - b) / sum(tokens) when per_token, else the mean over sentences.
    Only seeds present in both, and sentences present in every run, are used.
    """
    seeds = sorted(set(a) if b is None else set(a) & set(b))
    if not seeds:
        raise ValueError(f"no seed in common between the two settings ({column})")
    diff, tokens = _aligned(a, b, column, seeds)
    weight = tokens if per_token else np.ones_like(diff)
    estimate = float(np.mean(diff.sum(1) / weight.sum(1)))
    rng = np.random.default_rng(seed)
    n, k = diff.shape[1], len(seeds)
    stats = np.empty(draws)
    for d0 in range(0, draws, 200):   # in blocks, so that (seeds, block, sentences) stays small
        d1 = min(draws, d0 + 200)
        index = rng.integers(0, n, size=(d1 - d0, n))                               # sentences, shared by seeds
        per_seed = diff[:, index].sum(2) / weight[:, index].sum(2)                    # (seeds, block)
        chosen = rng.integers(0, k, size=(d1 - d0, k))                               # seeds, resampled
        stats[d0:d1] = per_seed[chosen, np.arange(d1 - d0)[:, None]].mean(1)
    low, high = np.quantile(stats, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Interval(estimate, float(low), float(high), k, n)


def over_seeds(values) -> Interval:
    """A quantity measured once per run (MI, AU, a probe's accuracy): the mean over seeds and a 95%
    t interval (n/a, NaN bounds, for one seed)."""
    x = np.asarray([v for v in values if not pd.isna(v)], dtype=np.float64)
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan, 0, 0)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, math.nan, math.nan, 1, 0)
    from scipy.stats import t

    half = float(t.ppf((1 + LEVEL) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return Interval(mean, mean - half, mean + half, len(x), 0)


# words: chosen by the interval, never typed by hand

def verdict(diff: Interval, *, margin: float, higher_is_worse: bool = True) -> str:
    """What a paired difference (setting - reference) licenses the paper to say.

    costs          the whole interval is worse than the reference (above 0 when higher is worse)
    buys           the whole interval is better
    ties           the interval contains 0 and lies within +- margin: equal to within the margin
    not resolved   the interval contains 0 but reaches past the margin: the data cannot tell
    """
    if math.isnan(diff.low):
        return "not resolved"
    worse, better = (diff.low > 0, diff.high < 0) if higher_is_worse else (diff.high < 0, diff.low > 0)
    if worse:
        return "costs"
    if better:
        return "buys"
    if -margin <= diff.low and diff.high <= margin:
        return "ties"
    return "not resolved"


def use(diff: Interval, *, margin: float) -> str:
    """What the decoder-side measure licenses: diff is the paired NLL with the latent slot masked minus
    the reconstruction term with z ~ q(z|x) (nats/token), i.e. what the decoder loses without z.

    uses z          the whole interval lies above the margin: without z the decoder is worse by more than it
    ignores z       the interval lies within +- margin: masking z changes nothing that matters
    not resolved    otherwise
    """
    if math.isnan(diff.low):
        return "not resolved"
    if diff.low > margin:
        return "uses z"
    if -margin <= diff.low and diff.high <= margin:
        return "ignores z"
    return "not resolved"


def trend(steps: list[Interval]) -> str:
    """Whether a quantity changes monotonically along a factor, from the paired differences between
    consecutive settings: "rises monotonically" / "falls monotonically" when every step's interval
    excludes 0 in the same direction, "not monotonic" when two steps' intervals exclude 0 in opposite
    directions, else "not resolved"."""
    if not steps:
        return "not resolved"
    if all(s.low > 0 for s in steps):
        return "rises monotonically"
    if all(s.high < 0 for s in steps):
        return "falls monotonically"
    if any(s.low > 0 for s in steps) and any(s.high < 0 for s in steps):
        return "not monotonic"
    return "not resolved"


__all__ = ["DRAWS", "Interval", "LEVEL", "over_seeds", "paired", "trend", "use", "verdict"]
