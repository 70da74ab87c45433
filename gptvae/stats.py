"""Paired statistics over seeds and sentences, and the words the paper may use for them.

A comparison of two settings is a paired difference: for each seed, both settings were trained from
that seed and evaluated on the same sentences, so the difference is taken seed by seed and sentence
by sentence, and the shared seed effect and the sentences' own difficulty cancel. Its interval counts
three sources of uncertainty, from the two-way ANOVA of the differences (seeds crossed with sentences):
the seeds, the sentences and their interaction, with a t quantile at the Welch-Satterthwaite degrees of
freedom of that combination, so that three seeds are treated as three, also when they happen to agree.

    a = {seed: per-sentence frame of setting A}     # gptvae.results.load_sentences
    b = {seed: per-sentence frame of the reference}
    diff = paired(a, b, "iw_nll", per_token=True)    # Interval(estimate, low, high, seeds, sentences)
    verdict(diff, margin=0.01)                       # "costs" | "buys" | "ties" | "not resolved"

The intervals are analytic, so the same files give the same intervals, byte for byte. A single seed gets
an interval over sentences only and no word.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

LEVEL = 0.95      # every interval is a 95% interval


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

    def clipped(self, bounds: tuple[float, float]) -> "Interval":
        """The interval within the values the quantity can take: a t interval of a mean of three can reach
        past 0 for a likelihood; the estimate itself is a mean of values within them and stays."""
        lowest, highest = bounds
        return replace(self, low=min(max(self.low, lowest), highest), high=max(min(self.high, highest), lowest))

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _aligned(a: dict[int, pd.DataFrame], b: dict[int, pd.DataFrame] | None, column: str, seeds: list[int]
             ) -> tuple[np.ndarray, np.ndarray]:
    """(differences, tokens), both (seeds, sentences): a - b (a alone when b is None) on the sentences
    every frame holds, in one order, so that a resampled sentence is the same sentence in every seed."""
    frames = [a[s] for s in seeds] + ([b[s] for s in seeds] if b is not None else [])
    common = set(frames[0]["sentence"][frames[0][column].notna()])
    for frame in frames[1:]:   # a sentence missing (or without a value) in any run is left out of all
        common &= set(frame["sentence"][frame[column].notna()])
    if not common:
        raise ValueError(f"no sentence in common: the runs were evaluated on different sentences ({column})")
    order = np.array(sorted(common))

    def column_of(frame, name):   # frame[name] at the sentences in `order` (one lookup per frame, no copy of it)
        sentences = frame["sentence"].to_numpy()
        values = frame[name].to_numpy(np.float64)
        if len(sentences) == len(order) and np.array_equal(sentences, order):
            return values
        index = pd.Index(sentences)
        if not index.is_unique:
            raise ValueError(f"a run lists a sentence twice: its per-sentence file is corrupt ({name})")
        return values[index.get_indexer(order)]   # every sentence of `order` is in every frame

    diff = np.stack([column_of(a[s], column) - (column_of(b[s], column) if b is not None else 0.0) for s in seeds])
    tokens = np.stack([column_of(a[s], "tokens") for s in seeds])
    return diff, tokens


def paired(a: dict[int, pd.DataFrame], b: dict[int, pd.DataFrame] | None, column: str, *, per_token: bool
           ) -> Interval:
    """Mean over seeds of the per-seed statistic of a - b (of a alone when b is None), with a 95% interval
    for a new seed and new sentences from the same populations.

    Every run is scored on the same sentences, so the differences d[s, i] (seed s, sentence i) form a
    crossed design: d = mu + seed effect + sentence effect + seed-by-sentence noise. The estimate (the
    grand mean) has variance var_seed / k + var_sentence / n + var_noise / (k n), each component estimated
    from the two-way ANOVA mean squares (`crossed_variance`); adding the spread over seeds to a sentence
    bootstrap instead would count the noise twice. The interval is estimate +- t(nu) * sqrt(variance), nu
    the Welch-Satterthwaite degrees of freedom of that combination of mean squares: three seeds whose
    spread is not dwarfed by the sentences' get about t(2) = 4.30, as a mean of three must (also when
    they happen to agree), and only a sentence spread far above the seeds' gives t with about n degrees of
    freedom, 1.96. One seed: the sentences alone
    (t with n - 1 degrees of freedom), and the Interval says seeds = 1: `verdict` gives it no word.

    The per-seed statistic is sum(a - b) / sum(tokens) when per_token (every seed has the same sentences,
    so the same tokens, and the ratio is linearised about the grand estimate), else the mean over
    sentences. Only seeds present in both, and sentences present (with a value) in every run, are used.
    The interval is analytic: the same files give the same bytes.
    """
    from scipy.stats import t

    seeds = sorted(set(a) if b is None else set(a) & set(b))
    if not seeds:
        raise ValueError(f"no seed in common between the two settings ({column})")
    diff, tokens = _aligned(a, b, column, seeds)
    k, n = diff.shape
    if per_token:
        per_seed = diff.sum(1) / tokens.sum(1)
        estimate = float(per_seed.mean())
        units = (diff - estimate * tokens) / tokens.mean() + estimate   # the ratio's linearisation: mean_i = per-seed ratio
    else:
        units = diff
        estimate = float(diff.mean())
    variance, dof = crossed_variance(units)
    half = float(t.ppf((1 + LEVEL) / 2, dof)) * math.sqrt(variance) if variance > 0 else 0.0
    return Interval(estimate, estimate - half, estimate + half, k, n)


def crossed_variance(x: np.ndarray) -> tuple[float, float]:
    """(variance of the grand mean, its Welch-Satterthwaite degrees of freedom) for x[seed, sentence] from
    the random-effects two-way model without replication: x = mu + a_s + b_i + e_si.

    With the mean squares MS_seed = n var(seed means), MS_sent = k var(sentence means) and MS_resid (the
    interaction, (k - 1)(n - 1) degrees of freedom), E MS_seed = n var_seed + var_noise, E MS_sent =
    k var_sentence + var_noise and E MS_resid = var_noise, so the variance of the grand mean, var_seed / k +
    var_sentence / n + var_noise / (k n), is (MS_seed + MS_sent - MS_resid) / (k n). MS_seed and MS_sent are
    floored at MS_resid (a variance component is not negative) but never dropped: a seed mean square that
    happens to fall below the noise still carries only its k - 1 degrees of freedom. Dropping it would read
    two or three seeds that agree by chance as proof that seeds do not matter, and give t with n degrees of
    freedom (1.96) where the seeds allow t(k - 1). One seed: the sentences' variance of the mean, n - 1."""
    k, n = x.shape
    if n < 2 and k < 2:
        return 0.0, math.inf
    sentence_means, seed_means, grand = x.mean(0), x.mean(1), float(x.mean())
    if k == 1:
        return float(x[0].var(ddof=1)) / n, float(n - 1)
    if n == 1:
        return float(seed_means.var(ddof=1)) / k, float(k - 1)
    ms_seed = n * float(seed_means.var(ddof=1))
    ms_sent = k * float(sentence_means.var(ddof=1))
    resid = x - seed_means[:, None] - sentence_means[None, :] + grand
    ms_resid = float((resid ** 2).sum()) / ((k - 1) * (n - 1))
    terms = [(max(ms_seed, ms_resid), k - 1), (max(ms_sent, ms_resid), n - 1),
             (-ms_resid, (k - 1) * (n - 1))]   # variance * (k n) = sum of these
    variance = max(sum(value for value, _ in terms), 0.0) / (k * n)
    return variance, effective_dof(*terms)


def effective_dof(*terms: tuple[float, float]) -> float:
    """Welch-Satterthwaite: the degrees of freedom of a sum of (coefficient-weighted) mean squares, given
    as (value, its degrees of freedom) pairs; a term with no degrees of freedom or no value contributes
    nothing. Infinite when nothing is left to estimate, so that t is the normal quantile."""
    used = [(value, dof) for value, dof in terms if dof > 0 and value != 0]
    if not used:
        return math.inf
    return sum(value for value, _ in used) ** 2 / sum(value * value / dof for value, dof in used)


def over_seeds(values, bounds: tuple[float, float] = (-math.inf, math.inf)) -> Interval:
    """A quantity measured once per run (MI, AU, a probe's accuracy): the mean over seeds and a 95% t
    interval (n/a, NaN bounds, for one seed), clipped to the values the quantity can take (`bounds`): two
    seeds' t(1) = 12.7 standard errors can reach past an accuracy of 1 or a KL of 0, which no run can."""
    x = np.asarray([v for v in values if not pd.isna(v)], dtype=np.float64)
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan, 0, 0)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, math.nan, math.nan, 1, 0)
    from scipy.stats import t

    half = float(t.ppf((1 + LEVEL) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    lowest, highest = bounds
    return Interval(mean, max(mean - half, lowest), min(mean + half, highest), len(x), 0)


@dataclass(frozen=True)
class Drift:
    """How far a paired comparison still moved at the end of training, and the word for it."""

    move: float                  # nats per token: what the trend of the difference changed over the last window
    seeds: int                   # seeds whose two runs both have curves
    word: str                    # "settled", "still moving" ("still rising" / "still falling": one quantity), "not judged"
    against: tuple[str, ...] = ()   # what the setting was compared with, where a caller names it

    def __str__(self) -> str:
        return "n/a" if math.isnan(self.move) else f"{self.move:.3f}"


NOT_JUDGED = Drift(math.nan, 0, "not judged")


def drift(a: dict[int, pd.Series], b: dict[int, pd.Series], *, window: int, tolerance: float) -> Drift:
    """Whether the difference between two settings had settled when training stopped.

    a, b: seed -> a run's validation bound by step (the same validation sentences at every point, so a - b
    is paired). Per seed, d = a - b at every validation step of either run, a run that stopped earlier held
    at its last value (its final model is the one compared); then the mean of d over seeds, the difference
    the tables report. Its movement is what its least-squares trend changes over the last `window` + 1
    points, |slope| x their span: the window of the plateau test (`gptvae.train.plateau`), applied to the
    comparison instead of one run. A trend and not a range, so that point-to-point noise, which grows with
    the KL (the bound samples one z), and the number of seeds are not read as movement. Two runs that still
    improve at the step limit, as runs whose cosine ends there do, can differ by an amount that no longer
    moves. "settled" below the tolerance, "still moving" at or above it, "not judged" with no seed in
    common, no window or too few points."""
    curves = {}
    for seed in sorted(set(a) & set(b)):
        pair = pd.concat({"a": a[seed].groupby(level=0).last(), "b": b[seed].groupby(level=0).last()}, axis=1)
        pair = pair.sort_index().ffill()
        curves[seed] = (pair.a - pair.b).dropna()
    move = _tail_move(curves, window=window, tolerance=tolerance)
    if math.isnan(move):
        return NOT_JUDGED
    return Drift(abs(move), len(curves), "settled" if abs(move) < tolerance else "still moving")


def level_drift(curves: dict[int, pd.Series], *, window: int, tolerance: float) -> Drift:
    """Whether one quantity, such as a setting's rate (its KL per token), had settled when training stopped:
    `drift` applied to the quantity itself instead of a difference. seed -> the quantity by step; the mean over
    seeds (a run that stopped earlier held at its last value), its least-squares move over the last `window` + 1
    points. "settled" below the tolerance, else "still rising" or "still falling"; "not judged" as `drift`."""
    move = _tail_move({seed: curve.groupby(level=0).last().dropna() for seed, curve in curves.items()},
                      window=window, tolerance=tolerance)
    if math.isnan(move):
        return NOT_JUDGED
    word = "settled" if abs(move) < tolerance else "still rising" if move > 0 else "still falling"
    return Drift(abs(move), len(curves), word)


def _tail_move(curves: dict[int, pd.Series], *, window: int, tolerance: float) -> float:
    """The mean over seeds of curves by step (each held at its last value), and what its least-squares trend
    changes over its last window + 1 points, signed; NaN with no curve, no window or too few points."""
    if window < 1 or not curves or math.isnan(tolerance):
        return math.nan
    mean = pd.concat(list(curves.values()), axis=1).sort_index().ffill().mean(axis=1).dropna()
    if len(mean) <= window:
        return math.nan
    tail = mean.iloc[-(window + 1):]
    steps = tail.index.to_numpy(np.float64)
    return float(np.polyfit(steps, tail.to_numpy(np.float64), 1)[0]) * float(steps[-1] - steps[0])


# words: chosen by the interval, never typed by hand

ONE_SEED = "no word (1 seed)"   # an interval far from 0 is still not a verdict over seeds


def verdict(diff: Interval, *, margin: float, higher_is_worse: bool = True) -> str:
    """What a paired difference (setting - reference) licenses the paper to say.

    ties           the interval lies within +- margin: any difference is too small to matter (an
                   equivalence test, which wins over a resolved but negligible difference)
    costs          the whole interval is worse than the reference (above 0 when higher is worse)
    buys           the whole interval is better
    not resolved   the interval contains 0 and reaches past the margin: the data cannot tell
    no word (1 seed)   one seed: no interval over seeds, so no verdict
    """
    if math.isnan(diff.low):
        return "not resolved"
    if diff.seeds < 2:
        return ONE_SEED
    if -margin <= diff.low and diff.high <= margin:
        return "ties"
    worse, better = (diff.low > 0, diff.high < 0) if higher_is_worse else (diff.high < 0, diff.low > 0)
    if worse:
        return "costs"
    if better:
        return "buys"
    return "not resolved"


def use(gain: Interval | None, swap: Interval | None = None, *, margin: float) -> str:
    """What the decoder-side measures license (nats/token, paired per seed and sentence). `gain` is IW-NLL -
    Rec: the model's NLL without z (its own marginal) minus the reconstruction term with its own z ~ q(z|x),
    what the decoder gains from z. It is at most the KL, and the IW estimate over-states it by the bound's
    looseness, so it is an upper bound. `swap` is the swap penalty: Rec with another sentence's z minus Rec
    with its own, what a wrong z costs the decoder. None where a measure is missing or no estimate.

    uses z          the swap penalty's interval lies above the margin: the decoder's predictions depend on z.
                    Without a swap penalty, the gain's interval does (which the bound's looseness can inflate)
    ignores z       the gain's interval lies within +- margin (it over-states the gain, so a small one is small),
                    or the swap penalty's does
    not resolved    otherwise (a single seed included: no interval over seeds)
    """
    measured = [m for m in (gain, swap) if m is not None and not math.isnan(m.low)]
    if not measured:
        return "not resolved"
    if any(m.seeds < 2 for m in measured):
        return ONE_SEED
    evidence_of_use = swap if swap is not None and not math.isnan(swap.low) else gain
    if evidence_of_use.low > margin:
        return "uses z"
    if any(-margin <= m.low and m.high <= margin for m in measured):
        return "ignores z"
    return "not resolved"


def trend(steps: list[Interval]) -> str:
    """Whether a quantity changes monotonically along a factor, from the paired differences between
    consecutive settings: "rises monotonically" / "falls monotonically" when every step's interval
    excludes 0 in the same direction, "not monotonic" when two steps' intervals exclude 0 in opposite
    directions, else "not resolved"."""
    if not steps:
        return "not resolved"
    if any(s.seeds < 2 for s in steps):
        return ONE_SEED
    if all(s.low > 0 for s in steps):
        return "rises monotonically"
    if all(s.high < 0 for s in steps):
        return "falls monotonically"
    if any(s.low > 0 for s in steps) and any(s.high < 0 for s in steps):
        return "not monotonic"
    return "not resolved"


__all__ = ["LEVEL", "Drift", "Interval", "crossed_variance", "drift", "effective_dof", "level_drift", "over_seeds",
           "paired", "trend", "use", "verdict"]
