"""Figures for the analysis notebooks. Each takes exported results (gptvae.results) and returns a figure.

Seeds are shown as error bars (mean ± std); the LM baseline, where it has the metric, as a dashed line.
`save` writes PNG and PDF without timestamps, so re-running gives the same files.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from gptvae.catalog import FIGURE, metric
from gptvae.families import BASELINE

plt.rcParams.update({"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "legend.fontsize": 9,
                     "figure.dpi": 110, "savefig.dpi": 150, "axes.spines.top": False, "axes.spines.right": False})

def _by_value(runs: pd.DataFrame, experiment: str, key: str) -> pd.DataFrame:
    vae = runs[(runs.experiment == experiment) & (runs.kind != BASELINE)]
    return vae.groupby("value")[key].agg(["mean", "std", "count"]).reset_index()


def _baseline(runs: pd.DataFrame, experiment: str, key: str):
    """(mean, std over seeds) of the LM baseline's metric, or None."""
    lm = runs[(runs.experiment == experiment) & (runs.kind == BASELINE)]
    if lm.empty or key not in lm or lm[key].isna().all():
        return None
    return lm[key].mean(), (lm[key].std() if lm[key].notna().sum() > 1 else 0.0)


def _draw_baseline(ax, base, *, label="LM baseline") -> None:
    """The LM reference: a dashed line at its mean and a band of ± one std over its seeds."""
    mean, std = base
    ax.axhline(mean, color="0.35", linestyle="--", linewidth=1, label=label)
    if std > 0:
        ax.axhspan(mean - std, mean + std, color="0.35", alpha=0.12, linewidth=0)


def _positions(values) -> dict[float, float]:
    """Grid values on the axis at their own values: the scale (`_scale`) makes decades readable."""
    return {v: v for v in sorted(set(values))}


def _scale(values) -> tuple[str, dict]:
    """A linear axis, or a symmetric-log one (linear below the smallest non-zero value) when the grid
    spans more than a decade: 0, 0.05, ..., 1 and 1, ..., 64 are then drawn to scale, zero included."""
    positive = sorted(v for v in set(values) if v > 0)
    if len(positive) >= 2 and positive[-1] / positive[0] > 10:
        return "symlog", {"linthresh": positive[0]}
    return "linear", {}


def _x_axis(ax, positions: dict[float, float], factor_label: str) -> None:
    name, kwargs = _scale(positions)
    ax.set_xscale(name, **kwargs)
    ax.set_xticks(list(positions.values()))
    ax.set_xticklabels([f"{v:g}" for v in positions], rotation=45 if name == "symlog" else 0, fontsize=9)
    ax.minorticks_off()
    if name == "symlog":   # no empty stretch of negative values left of a zero
        low, high = min(positions), max(positions)
        ax.set_xlim(low - 0.25 * kwargs["linthresh"] if low <= 0 else low / 1.3, high * 1.3)
    ax.set_xlabel(factor_label + (" (symlog scale)" if name == "symlog" else ""))


def metrics_vs_factor(runs: pd.DataFrame, experiment: str, *, factor_label: str, metrics=None, ncols: int = 3):
    """One panel per metric against the ablated factor; the LM baseline as a dashed line."""
    metrics = [m for m in (metrics or FIGURE) if m in runs and runs.loc[runs.experiment == experiment, m].notna().any()]
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, metrics):
        stats = _by_value(runs, experiment, key)
        at = _positions(stats["value"])
        ax.errorbar(stats["value"].map(at), stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3,
                    label="GPT-VAE")
        base = _baseline(runs, experiment, key)
        if base is not None and not metric(key).latent_only:
            _draw_baseline(ax, base)
        if key.endswith(".au") or key.endswith(".kl") or key.endswith(".mi"):
            ax.set_ylim(bottom=min(0.0, float(stats["mean"].min())) if key.endswith(".mi") else 0.0)
        _x_axis(ax, at, factor_label)
        if key.endswith("ppl") and stats["mean"].min() > 0 and stats["mean"].max() / stats["mean"].min() > 20:
            ax.set_yscale("log")   # a collapsed bound can put PPL orders of magnitude above the rest
        ax.set_ylabel(metric(key).axis)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    axes.flat[0].legend(loc="best")
    seeds = runs.loc[runs.experiment == experiment, "seed"].nunique()
    fig.suptitle(f"Validation metrics against {factor_label} (mean ± std over {seeds} seed{'s' * (seeds > 1)}; "
                 f"the LM baseline dashed, its seeds shaded)")
    fig.tight_layout()
    return fig


def rate_distortion(runs: pd.DataFrame, experiment: str, *, factor_label: str):
    """KL (rate) against Rec (distortion), one point per setting, labelled with the factor's value."""
    kl, rec = _by_value(runs, experiment, "valid.kl"), _by_value(runs, experiment, "valid.rec")
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    ax.errorbar(kl["mean"], rec["mean"], xerr=kl["std"].fillna(0), yerr=rec["std"].fillna(0), marker="o",
                linestyle="-", capsize=3)
    for i, (value, x, y) in enumerate(zip(kl["value"], kl["mean"], rec["mean"])):
        # alternate sides, so that labels of nearby points (a collapsed grid sits at one spot) do not overprint
        ax.annotate(f"{value:g}", (x, y), textcoords="offset points", xytext=(6, 6 - 14 * (i % 2)), fontsize=9,
                    arrowprops=dict(arrowstyle="-", color="0.6", linewidth=0.5))
    base = _baseline(runs, experiment, "valid.rec")
    if base is not None:
        _draw_baseline(ax, base, label="LM baseline NLL")
        ax.legend(loc="best")
    ax.set_xlabel("rate: KL (nats/sequence)")
    ax.set_ylabel("distortion: Rec (nats/sequence)")
    ax.set_title(f"Rate against distortion (points labelled with {factor_label})")
    fig.tight_layout()
    return fig


def training_curves(history: pd.DataFrame, runs: pd.DataFrame, experiment: str, *, factor_label: str,
                    keys=("val/nll_bound_per_token", "val/kl", "val/au")):
    """The validation bound (where a plateau shows), KL and active units over training, one line per
    setting (mean over seeds, ± std band), the LM's bound dashed."""
    vae = runs[(runs.experiment == experiment) & (runs.kind != BASELINE)][["run_id", "value"]]
    curves = history.merge(vae.rename(columns={"value": "setting"}), on="run_id")
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.6), squeeze=False)
    cmap = plt.get_cmap("viridis")
    values = sorted(vae["value"].unique())
    for ax, key in zip(axes.flat, keys):
        for i, value in enumerate(values):
            points = curves[(curves.key == key) & (curves.setting == value)]
            stats = points.groupby("step")["value"].agg(["mean", "std"])
            colour = cmap(i / max(1, len(values) - 1))
            ax.plot(stats.index, stats["mean"], color=colour, label=f"{value:g}")
            if stats["std"].notna().any():   # seeds as a band of ± one std
                low = stats["mean"] - stats["std"]
                ax.fill_between(stats.index, low.clip(lower=0) if key == "val/au" else low,
                                stats["mean"] + stats["std"], color=colour, alpha=0.2, linewidth=0)
        if key == "val/nll_bound_per_token":
            lm = runs[(runs.experiment == experiment) & (runs.kind == BASELINE)][["run_id"]]
            points = history[(history.key == key) & history.run_id.isin(lm.run_id)]
            if not points.empty:
                ax.plot(*zip(*points.groupby("step")["value"].mean().items()), color="0.35", linestyle="--",
                        linewidth=1, label="LM")
        if key in ("val/au", "val/kl"):
            ax.set_ylim(bottom=0)
        ax.set_xlabel("training step")
        ax.set_ylabel(metric(key).axis)
    axes.flat[-1].legend(title=factor_label, loc="best", ncol=2)
    seeds = runs.loc[runs.experiment == experiment, "seed"].nunique()
    fig.suptitle(f"Training: the validation bound, KL and active units (mean ± std over {seeds} "
                 f"seed{'s' * (seeds > 1)})")
    fig.tight_layout()
    return fig


def posterior_means(means: pd.DataFrame, runs: pd.DataFrame, experiment: str, *, label: str, symbol: str,
                    ncols: int = 3):
    """2-D PCA of posterior means on validation sentences, one panel per setting, coloured by a label."""
    vae = runs[(runs.experiment == experiment) & (runs.kind != BASELINE)].drop_duplicates(["value"])
    panels = [(row.value, means[means.run_id == row.run_id]) for row in vae.itertuples()]
    panels = [(v, m) for v, m in panels if not m.empty]
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.3 * nrows), squeeze=False,
                             layout="constrained")
    classes = sorted(means[label].dropna().unique())
    discrete = len(classes) <= 10
    cmap = plt.get_cmap("coolwarm", len(classes)) if discrete else plt.get_cmap("viridis")
    for ax, (value, points) in zip(axes.flat, panels):
        if discrete:   # a label with few classes: one colour each, named in a legend
            for i, cls in enumerate(classes):
                part = points[points[label] == cls]
                ax.scatter(part.pc1, part.pc2, s=6, alpha=0.7, color=cmap(i), label=f"{label} {cls:g}")
        else:
            scatter = ax.scatter(points.pc1, points.pc2, c=points[label], s=6, cmap=cmap, alpha=0.7)
        ax.set_title(f"{symbol} = {value:g}")
        ax.set_xlabel("PC 1 of μ")
        ax.set_ylabel("PC 2 of μ")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    if discrete:
        axes.flat[0].legend(loc="best", markerscale=2, fontsize=8)
    else:
        fig.colorbar(scatter, ax=axes, label=label, shrink=0.6)
    fig.suptitle(f"Posterior means of {len(panels[0][1])} validation sentences, first seed (first two principal "
                 f"components of μ, each panel its own)")
    return fig


def save(fig, name: str, folder: str | Path) -> list[Path]:
    """PNG and PDF with no timestamps or version stamps, so regenerated files match."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.pdf"]
    fig.savefig(paths[0], metadata={"Software": None}, bbox_inches="tight")
    fig.savefig(paths[1], metadata={"Creator": None, "Producer": None, "CreationDate": None}, bbox_inches="tight")
    plt.close(fig)
    return paths


def overview(runs: pd.DataFrame):
    """MI against KL for every VAE run of every ablation: MI <= KL, and collapse sits at the origin."""
    vae = runs[runs.kind != BASELINE].drop_duplicates("run_id")   # a run two sweeps share is one point
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    for experiment, group in vae.groupby("experiment", sort=True):
        ax.scatter(group["valid.kl"], group["valid.mi"], label=experiment.removeprefix("ablation-"), s=22, alpha=0.8)
    top = float(np.nanmax(vae[["valid.kl", "valid.mi"]].to_numpy())) if len(vae) else 1.0
    ceiling = float(np.nanmax(vae["valid.mi"])) + 1 if len(vae) else 1.0   # the diagonal only where MI can be
    diagonal = np.linspace(0, ceiling, 200)
    ax.plot(diagonal, diagonal, color="0.5", linestyle=":", linewidth=1, label="MI = KL")
    if "valid.mi_samples" in vae:
        log_n = np.log(vae["valid.mi_samples"].max())
        ax.axhline(log_n, color="0.5", linestyle="--", linewidth=1, label=f"log N (N = {int(np.exp(log_n) + 0.5)})")
    if top > 20:   # an unregularised autoencoder (beta = 0) would squeeze every other run into a corner
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(left=0)
    ax.set_xlabel("KL (nats/sequence)" + (", symlog scale" if top > 20 else ""))
    ax.set_ylabel("MI (nats)")
    ax.set_title("Mutual information against rate, all runs")
    ax.legend(loc="best")
    fig.tight_layout()
    return fig
