"""The metric catalogue: what each exported metric is called, in what unit, to how many digits.

Tables, figures and the paper all read it, so a metric is named and rounded the same everywhere.
A new metric is one entry here (and, to appear, its key in TABLE or FIGURE). The ablation catalogue
is the specs themselves: `gptvae.sweep.load_specs()` gives each ablation's label and symbol.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    key: str                   # column of runs.csv, e.g. "valid.iw_nll_per_token"
    label: str                 # short name: table header, legend
    unit: str = ""             # e.g. "nats/sequence"; "" for counts and fractions
    digits: int = 3            # decimals in tables and prose
    latent_only: bool = False  # needs a latent: the LM baseline has none (no reference line, n/a in tables)
    axis_label: str = ""       # axis label where "label (unit)" would not read well

    @property
    def axis(self) -> str:
        if self.axis_label:
            return self.axis_label
        return f"{self.label} ({self.unit})" if self.unit else self.label

    def format(self, value: float) -> str:
        return f"{value:.{self.digits}f}"


METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric("valid.neg_elbo", "-ELBO", "nats/sequence"),
    Metric("valid.rec", "Rec", "nats/sequence"),
    Metric("valid.kl", "KL", "nats/sequence", latent_only=True),
    Metric("valid.mi", "MI", "nats", latent_only=True),
    Metric("valid.au", "AU", digits=1, latent_only=True, axis_label="active units"),
    Metric("valid.iw_nll", "IW-NLL", "nats/sequence"),
    Metric("valid.iw_nll_per_token", "IW-NLL", "nats/token"),
    Metric("valid.ppl", "PPL", digits=1, axis_label="PPL (IW-NLL)"),
    Metric("valid.lm_nll", "NLL (z masked)", "nats/sequence"),
    Metric("valid.lm_nll_per_token", "NLL (z masked)", "nats/token",
           axis_label="NLL, latent masked (nats/token)"),
    Metric("valid.probe_acc_sentiment", "probe acc.", latent_only=True, axis_label="sentiment probe accuracy"),
    # curves (history.csv): logged during training on the fixed validation subset, or on training batches
    Metric("val/neg_elbo", "-ELBO", "nats/sequence"),
    Metric("val/rec", "Rec", "nats/sequence"),
    Metric("val/kl", "KL", "nats/sequence", latent_only=True),
    Metric("val/au", "AU", digits=1, latent_only=True, axis_label="active units"),
    Metric("val/nll_bound_per_token", "NLL bound", "nats/token"),
    Metric("train/loss", "loss", "nats/token"),
    Metric("train/kl", "KL (train)", "nats/sequence", latent_only=True),
    Metric("train/rec_per_token", "Rec (train)", "nats/token"),
)}

# what the ablation tables show (per sequence, as the literature reports), and the figures (per token)
TABLE = ("valid.neg_elbo", "valid.rec", "valid.kl", "valid.mi", "valid.au", "valid.iw_nll", "valid.ppl",
         "valid.lm_nll", "valid.probe_acc_sentiment")
FIGURE = ("valid.neg_elbo", "valid.rec", "valid.kl", "valid.mi", "valid.au", "valid.iw_nll_per_token", "valid.ppl",
          "valid.lm_nll_per_token", "valid.probe_acc_sentiment")


def metric(key: str) -> Metric:
    """The catalogue entry of `key`; an uncatalogued key gets a plain one (named by its key, 3 digits)."""
    return METRICS.get(key) or Metric(key, key)


__all__ = ["FIGURE", "METRICS", "Metric", "TABLE", "metric"]
