"""The metric catalogue: what each exported metric is called, in what unit, to how many digits.

Tables, figures and the paper all read it, so a metric is named and rounded the same everywhere.
A new metric is one entry here (and, to appear in the figures, its key in FIGURE). The ablation catalogue
is the specs themselves: `gptvae.sweep.load_specs()` gives each ablation's label and symbol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Metric:
    key: str                   # column of runs.csv, e.g. "valid.iw_nll_per_token"
    label: str                 # short name: table header, legend
    unit: str = ""             # e.g. "nats/sequence"; "" for counts and fractions
    digits: int = 3            # decimals in tables and prose
    latent_only: bool = False  # needs a latent: the LM baseline has none (no reference line, n/a in tables)
    axis_label: str = ""       # axis label where "label (unit)" would not read well
    bounds: tuple[float, float] = (-math.inf, math.inf)   # the values it can take: intervals are clipped to them
    undefined_on: tuple[tuple[str, str], ...] = ()   # (corpus, why): logged there, but no measure of anything

    @property
    def axis(self) -> str:
        if self.axis_label:
            return self.axis_label
        return f"{self.label} ({self.unit})" if self.unit else self.label

    def format(self, value: float) -> str:
        return f"{value:.{self.digits}f}"


ACCURACY = (0.0, 1.0)
PERCENT = (0.0, 100.0)   # sacreBLEU's scale
NLL = (0.0, math.inf)   # a negative log-likelihood of discrete tokens, or a bound on one
# BLEU counts whitespace-separated words, and a synthetic sequence is one word of 66 characters
ONE_WORD = (("synthetic", "a synthetic sequence is one word, so its word BLEU is 0 unless the reconstruction "
                          "is exact"),)

METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric("valid.neg_elbo", "-ELBO", "nats/sequence", bounds=NLL),
    Metric("valid.rec", "Rec", "nats/sequence", bounds=NLL),
    Metric("valid.kl", "KL", "nats/sequence", latent_only=True, bounds=(0.0, math.inf)),
    Metric("valid.mi", "MI", "nats", latent_only=True),
    Metric("valid.au", "AU", digits=1, latent_only=True, axis_label="active units", bounds=(0.0, math.inf)),
    Metric("valid.iw_nll", "IW-NLL", "nats/sequence", bounds=NLL),
    Metric("valid.iw_nll_per_token", "IW-NLL", "nats/token", bounds=NLL),
    Metric("valid.ppl", "PPL", digits=1, axis_label="PPL (IW-NLL)", bounds=(1.0, math.inf)),
    Metric("valid.lm_nll", "NLL (z masked)", "nats/sequence", bounds=NLL),
    Metric("valid.lm_nll_per_token", "NLL (z masked)", "nats/token",
           axis_label="NLL, latent masked (nats/token)", bounds=NLL),
    Metric("valid.nll_bound_per_token", "-ELBO", "nats/token", axis_label="-ELBO (nats/token)", bounds=NLL),
    Metric("valid.mi_noise", "MI noise", "nats", latent_only=True),
    Metric("valid.mi_ceiling", "log N", "nats", latent_only=True),
    Metric("valid.iw_ess_median", "ESS", digits=1, latent_only=True, axis_label="IW effective sample size"),
    Metric("valid.probe_acc_sentiment", "probe on μ", latent_only=True, axis_label="sentiment probe on μ",
           bounds=ACCURACY),
    Metric("valid.probe_z_acc_sentiment", "probe on z", latent_only=True,
           axis_label="sentiment probe on sampled z (accuracy)", bounds=ACCURACY),
    Metric("valid.probe_majority_sentiment", "majority class", latent_only=True, bounds=ACCURACY),
    Metric("valid.probe_untrained_z_acc_sentiment", "probe, untrained", latent_only=True, bounds=ACCURACY),
    Metric("valid.recon_bleu", "BLEU (z = μ)", digits=1, latent_only=True,
           axis_label="greedy reconstruction BLEU (z = μ)", bounds=PERCENT, undefined_on=ONE_WORD),
    Metric("valid.recon_bleu_masked", "BLEU (z masked)", digits=1, bounds=PERCENT, undefined_on=ONE_WORD),
    # the synthetic task (Fleuret 2025): its exact likelihood, and what the latent controls in samples
    Metric("valid.exact_nll", "exact NLL", "nats/sequence", bounds=(0.0, math.inf)),
    Metric("valid.exact_nll_per_token", "exact NLL", "nats/token", bounds=(0.0, math.inf)),
    Metric("valid.probe_z_acc_position", "position probe on z", latent_only=True,
           axis_label="position probe on sampled z (accuracy)", bounds=ACCURACY),
    Metric("valid.probe_majority_position", "majority position", latent_only=True, bounds=ACCURACY),
    Metric("valid.probe_z_acc_letter", "letter probe on z", latent_only=True,
           axis_label="letter probe on sampled z (accuracy)", bounds=ACCURACY),
    Metric("valid.probe_majority_letter", "majority letter", latent_only=True, bounds=ACCURACY),
    Metric("valid.control_well_formed", "well-formed samples", latent_only=True, bounds=ACCURACY),
    *(Metric(f"valid.control_{measure}_{pairs}", f"{measure} agreement, {words}", latent_only=True, bounds=ACCURACY)
      for measure in ("position", "letter", "noise")
      for pairs, words in (("shared", "shared Z"), ("independent", "independent Z"), ("chance", "chance"))),
    # curves (history.csv): logged during training on the fixed validation subset, or on training batches
    Metric("val/neg_elbo", "-ELBO", "nats/sequence"),
    Metric("val/rec", "Rec", "nats/sequence"),
    Metric("val/kl", "KL", "nats/sequence", latent_only=True, bounds=(0.0, math.inf)),
    Metric("val/au", "AU", digits=1, latent_only=True, axis_label="active units", bounds=(0.0, math.inf)),
    Metric("val/nll_bound_per_token", "NLL bound", "nats/token"),
    Metric("train/loss", "loss", "nats/token"),
    Metric("train/kl", "KL (train)", "nats/sequence", latent_only=True),
    Metric("train/rec_per_token", "Rec (train)", "nats/token"),
)}

# the panels of an ablation's metrics figure (per token where a metric has both)
FIGURE = ("valid.iw_nll_per_token", "valid.nll_bound_per_token", "valid.lm_nll_per_token", "valid.kl", "valid.mi",
          "valid.au", "valid.probe_z_acc_sentiment", "valid.recon_bleu",
          # the synthetic task only (a panel whose metric no run logged is left out)
          "valid.probe_z_acc_position", "valid.probe_z_acc_letter", "valid.control_position_shared",
          "valid.control_noise_shared",
          "valid.control_well_formed")

# an IW-NLL whose importance weights have a median effective sample size below this is not an estimate of
# the likelihood (one sample carries the average): it is printed and drawn as n/a, never as a number
ESS_FLOOR = 2.0
ESTIMATED = ("iw_nll", "iw_nll_per_token", "ppl")   # the metrics ESS_FLOOR applies to (valid.*, test.*)


def not_estimable(rows, split: str = "valid") -> str | None:
    """Why the IW-NLL of these runs (rows of runs.csv) is no estimate, or None when it is one. A setting's
    seeds are averaged, so one seed whose median ESS is below the floor makes the setting's mean no estimate;
    the reason names that seed."""
    key = f"{split}.iw_ess_median"
    if key not in rows or rows[key].isna().all():
        return None
    worst = rows.iloc[rows[key].reset_index(drop=True).idxmin()]   # by position: an index may repeat
    ess = float(worst[key])
    if ess < ESS_FLOOR:
        k = int(rows[f"{split}.iw_samples"].iloc[0]) if f"{split}.iw_samples" in rows else "K"
        at = f" at seed {int(worst['seed'])}" if len(rows) > 1 and "seed" in rows else ""
        return f"n/a: ESS {ess:.1f} of {k}{at}"
    return None


def mi_at_ceiling(mi: float, ceiling: float) -> bool:
    """Whether a whole-set MI estimate is saturated: near log N, where more information in z cannot raise it.

    The estimator (`gptvae.metrics.mutual_information`) estimates q(z) from the N posteriors themselves:
    up to the noise of its entropy term (standard deviation about sqrt(D / 2N), 0.04 nats at N = 9,611
    and D = 32), log N - MI = mean_i log(1 + r_i), where r_i is the density the other N - 1 posteriors
    put at z_i relative to x_i's own. Like InfoNCE it is biased low everywhere and can never pass log N
    by more than that noise; once it is within log 2 of log N, the sentences' own components outweigh all
    others at their samples (1 + r_i <= 2 in the geometric mean): the estimator is separating the N
    sentences, and it reads ">= estimate (at ceiling)"."""
    return bool(math.isfinite(mi) and math.isfinite(ceiling) and mi >= ceiling - math.log(2))


def value_text(value) -> str:
    """A grid value as tables, figures and prose write it: 0.25, 64, cyclical, and 1/64 for a fraction
    that %g would spell in six digits (0.015625) but a denominator up to 1,024 gives exactly."""
    if isinstance(value, str):
        return value
    if float(f"{value:.3g}") != value and (exact := Fraction(value).limit_denominator(1024)) == value:
        return f"{exact.numerator}/{exact.denominator}"
    return f"{value:g}"


def undefined(key: str, corpus: str) -> str | None:
    """Why `key` measures nothing on `corpus` (tables print n/a with it, figures leave its panel out), or None."""
    return dict(_on_any_split(key).undefined_on).get(corpus)


def metric(key: str) -> Metric:
    """The catalogue entry of `key`; an uncatalogued key gets a plain one (named by its key, 3 digits)."""
    return METRICS.get(key) or Metric(key, key)


def bounds(key: str) -> tuple[float, float]:
    """The values a metric can take, on any split or protocol ("test.kl" is bounded as "valid.kl" is)."""
    return _on_any_split(key).bounds


def _on_any_split(key: str) -> Metric:
    """The catalogue entry of `key`, or of the same metric on valid ("test.kl" reads "valid.kl")."""
    return METRICS.get(key) or METRICS.get(f"valid.{key.partition('.')[2]}") or Metric(key, key)


__all__ = ["ACCURACY", "ESS_FLOOR", "PERCENT", "bounds", "ESTIMATED", "FIGURE", "METRICS", "Metric", "metric", "mi_at_ceiling", "not_estimable",
           "undefined", "value_text"]
