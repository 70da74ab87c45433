"""Figures for the analysis notebooks. Each takes exported results (gptvae.results) and returns a figure.

Seeds are shown as error bars (the mean and a 95% t interval over seeds); the LM baseline, where it has
the metric, as a dashed line with its seeds' range shaded. A factor of names (a schedule) is drawn at
evenly spaced positions labelled with the names; a numeric factor at its values, on a symlog axis when
they span decades. `save` writes PNG and PDF without timestamps, so re-running gives the same files.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from gptvae.catalog import ESS_FLOOR, ESTIMATED, FIGURE, bounds, metric, undefined, value_text
from gptvae.families import BASELINE
from gptvae.results import baseline_rows
from gptvae.stats import over_seeds

plt.rcParams.update({"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "legend.fontsize": 9,
                     "figure.dpi": 110, "savefig.dpi": 150, "axes.spines.top": False, "axes.spines.right": False})

def _estimable(frame: pd.DataFrame, key: str) -> pd.Series:
    """The metric, with values the estimator cannot support (IW-NLL at a median ESS below ESS_FLOOR) as NaN."""
    values = frame[key].astype(float)
    split, _, name = key.partition(".")
    ess = f"{split}.iw_ess_median"
    if name in ESTIMATED and ess in frame:
        values = values.where(~(frame[ess] < ESS_FLOOR))
    return values


def _by_value(runs: pd.DataFrame, experiment: str, key: str) -> pd.DataFrame:
    """Per setting: the mean over seeds, the 95% t interval's half-widths (0 for one seed), the seeds, and
    how many seeds had no estimate (n/a)."""
    vae = runs[(runs.experiment == experiment) & ~baseline_rows(runs)]
    vae = vae.assign(shown=_estimable(vae, key))
    rows = []
    for value, group in vae.groupby("value"):
        if group.shown.isna().sum() > group[key].isna().sum():   # a seed without an estimate: the setting is n/a
            rows.append({"value": value, "mean": np.nan, "low": 0.0, "high": 0.0, "count": 0,
                         "missing": int(group.shown.isna().sum() - group[key].isna().sum())})
            continue
        lowest, highest = bounds(key)
        if key.endswith(".au") and "model.dim_latent" in group and group["model.dim_latent"].notna().all():
            # no more active units than dimensions (nor below what a run reported, were its D not its own)
            highest = min(highest, max(float(group["model.dim_latent"].max()), float(group.shown.max())))
        interval = over_seeds(group.shown, (lowest, highest))
        low = 0.0 if np.isnan(interval.low) else interval.estimate - interval.low
        high = 0.0 if np.isnan(interval.high) else interval.high - interval.estimate
        rows.append({"value": value, "mean": interval.estimate, "low": low, "high": high,
                     "count": interval.seeds, "missing": int(group.shown.isna().sum() - group[key].isna().sum())})
    return pd.DataFrame(rows, columns=["value", "mean", "low", "high", "count", "missing"])


def _baseline(runs: pd.DataFrame, experiment: str, key: str):
    """(mean, lowest, highest over seeds) of the LM baseline's metric, or None."""
    lm = runs[(runs.experiment == experiment) & baseline_rows(runs)]
    if lm.empty or key not in lm or lm[key].isna().all():
        return None
    return lm[key].mean(), lm[key].min(), lm[key].max()


def _draw_baseline(ax, base, *, label="LM baseline") -> None:
    """The LM reference: a dashed line at its mean over seeds, its seeds' range shaded."""
    mean, low, high = base
    ax.axhline(mean, color="0.35", linestyle="--", linewidth=1, label=label)
    if high > low:
        ax.axhspan(low, high, color="0.35", alpha=0.15, linewidth=0)


def _name(value, names) -> str:
    """How a setting is written on an axis or in a legend: its name for a factor of names, else the number."""
    return str(names[int(value)]) if names else value_text(value)


def _positions(values) -> dict[float, float]:
    """Grid values on the axis at their own values: the scale (`_scale`) makes decades readable. A factor
    of names has values 0, 1, ... (positions in its grid), drawn evenly spaced."""
    return {v: v for v in sorted(set(values))}


def _scale(values) -> tuple[str, dict]:
    """A linear axis, or a symmetric-log one (linear below the smallest non-zero value) when the grid
    spans more than a decade: 0, 0.05, ..., 1 and 1, ..., 64 are then drawn to scale, zero included."""
    positive = sorted(v for v in set(values) if v > 0)
    if len(positive) >= 2 and positive[-1] / positive[0] > 10:
        return "symlog", {"linthresh": positive[0]}
    return "linear", {}


def _x_axis(ax, positions: dict[float, float], factor_label: str, names=None) -> None:
    if names:   # categories: evenly spaced, labelled with their names
        ax.set_xticks(list(positions.values()))
        ax.set_xticklabels([_name(v, names) for v in positions], fontsize=9)
        ax.set_xlim(min(positions) - 0.5, max(positions) + 0.5)
        ax.set_xlabel(factor_label)
        return
    name, kwargs = _scale(positions)
    ax.set_xscale(name, **kwargs)
    ax.set_xticks(list(positions.values()))
    ax.set_xticklabels([value_text(v) for v in positions], rotation=45 if name == "symlog" else 0, fontsize=9)
    ax.minorticks_off()
    if name == "symlog":   # no empty stretch of negative values left of a zero
        low, high = min(positions), max(positions)
        ax.set_xlim(low - 0.25 * kwargs["linthresh"] if low <= 0 else low / 1.3, high * 1.3)
    ax.set_xlabel(factor_label + (" (symlog scale)" if name == "symlog" else ""))


def _reference_lines(ax, runs: pd.DataFrame, experiment: str, key: str) -> None:
    """What a panel is read against: the LM baseline, log N on MI (the whole-set estimator's ceiling), the
    majority class and the untrained architecture on a probe."""
    rows = runs[(runs.experiment == experiment) & ~baseline_rows(runs)]
    split = key.split(".", 1)[0]
    base = _baseline(runs, experiment, key)
    if base is not None and not metric(key).latent_only:
        _draw_baseline(ax, base)
    if key.endswith(".mi") and f"{split}.mi_ceiling" in rows and rows[f"{split}.mi_ceiling"].notna().any():
        ax.axhline(rows[f"{split}.mi_ceiling"].max(), color="tab:red", linestyle=":", linewidth=1,
                   label="log N (the estimate saturates)")
    exact = f"{split}.exact_nll_per_token"
    if key.endswith(("iw_nll_per_token", "nll_bound_per_token", "lm_nll_per_token")) and exact in rows \
            and rows[exact].notna().any():   # the synthetic task's entropy: the floor no estimate may pass
        ax.axhline(rows[exact].mean(), color="tab:green", linestyle="-.", linewidth=1,
                   label="exact entropy of the data")
    mode, tokens, sequences = "objective.free_bits_mode", f"{split}.n_tokens", f"{split}.n_sequences"
    if key.endswith(".kl") and all(c in rows for c in (mode, tokens, sequences, "objective.free_bits_nats")):
        floored = rows[rows[mode] == "per_token"]   # a floor at every position: a sequence's KL up to it is free
        if not floored.empty:
            budget = (floored["objective.free_bits_nats"] * floored[tokens] / floored[sequences]).groupby(
                floored["value"]).mean()
            ax.plot(budget.index, budget.values, color="tab:orange", linestyle=":", marker="_", linewidth=1,
                    label="free budget: floor × tokens")
    if ".control_" in key and key.endswith("_shared"):
        measure = key.split(".control_", 1)[1].removesuffix("_shared")
        independent, chance = f"{split}.control_{measure}_independent", f"{split}.control_{measure}_chance"
        if independent in rows and rows[independent].notna().any():   # each setting's own samples
            stats = _by_value(runs, experiment, independent)
            ax.plot(stats["value"], stats["mean"], color="0.5", linestyle="--", marker="x", linewidth=1,
                    label="independent Z")
        if chance in rows and rows[chance].notna().any():
            ax.axhline(rows[chance].mean(), color="0.35", linestyle=":", linewidth=1, label="chance (the task)")
    if ".probe_z_acc_" in key:
        label = key.split(".probe_z_acc_", 1)[1]
        majority = f"{split}.probe_majority_{label}"
        if majority in rows and rows[majority].notna().any():   # the same data for every setting: one line
            ax.axhline(rows[majority].mean(), color="0.35", linestyle=":", linewidth=1, label="majority class")
        untrained = f"{split}.probe_untrained_z_acc_{label}"
        if untrained in rows and rows[untrained].notna().any():   # each setting's own untrained architecture
            stats = _by_value(runs, experiment, untrained)
            ax.plot(stats["value"], stats["mean"], color="0.5", linestyle="--", marker="x", linewidth=1,
                    label="same architecture, untrained")


def _far_above(stats: pd.DataFrame, also=()) -> tuple[int, float, float] | None:
    """(row of `stats` (`_by_value`) drawn beyond a panel's axis, the rest's lowest and highest), or None: the
    largest mean, when its whole interval lies above the rest (their intervals, and the values in `also`: the
    LM's seeds' range, the exact entropy) by more than 3 times the rest's span (at least 0.1% of its level, so
    that a bulk of equal values does not make every other value far). One such setting (κ = 8 bits against a bulk within 0.3 nats/token of the LM)
    would otherwise flatten every difference the panel exists to show. At most one is moved: the next largest
    then sets the scale."""
    shown = stats.dropna(subset=["mean"]).sort_values("mean")
    if len(shown) < 3:
        return None
    top, rest = shown.iloc[-1], shown.iloc[:-1]
    low = min([*(rest["mean"] - rest["low"]), *also])
    high = max([*(rest["mean"] + rest["high"]), *also])
    span = max(high - low, 1e-3 * abs(high))
    return (shown.index[-1], low, high) if top["mean"] - top["low"] - high > 3 * span else None


def metrics_vs_factor(runs: pd.DataFrame, experiment: str, *, factor_label: str, metrics=None, ncols: int = 4,
                      names=None, family: str = "GPT-VAE"):
    """One panel per metric against the ablated factor (mean and 95% t interval over seeds), each with the
    lines it is read against (`_reference_lines`). An IW-NLL the estimator cannot support is left out and
    the panel says so. names: the grid of a factor of names (runs.value is then a position in it)."""
    mine = runs[runs.experiment == experiment]
    corpora = set(mine["dataset"].dropna()) if "dataset" in mine else set()
    grid = mine[~baseline_rows(mine)]
    lms = set(grid.kind) == {BASELINE}   # an LM grid (a budget probe): its latent-only metrics measure nothing
    metrics = [m for m in (metrics or FIGURE) if m in grid and grid[m].notna().any() and not (lms and metric(m).latent_only)
               and not any(undefined(m, corpus) for corpus in corpora)]   # a metric that measures nothing there
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.7 * ncols, 3.1 * nrows), squeeze=False)
    arrows = False   # whether a panel drew a setting beyond its axis
    for ax, key in zip(axes.flat, metrics):
        stats = _by_value(runs, experiment, key)
        at = _positions(stats["value"])
        base = _baseline(runs, experiment, key) if not metric(key).latent_only else None
        exact = f"{key.split('.', 1)[0]}.exact_nll_per_token"
        entropy = [mine[exact].mean()] if key.endswith("_per_token") and exact in mine and mine[exact].notna().any() else []
        # a likelihood panel, read against the LM: one setting far above would flatten the differences it shows
        far = _far_above(stats, [*(base[1:] if base else ()), *entropy]) if key.endswith("_per_token") else None
        near = stats.drop(index=far[0]) if far is not None else stats
        digits = metric(key).digits
        ax.errorbar(near["value"].map(at), near["mean"], yerr=[near["low"], near["high"]], marker="o",
                    capsize=3, label=family)
        for row in stats[stats["missing"] > 0].itertuples():
            ax.annotate("n/a (ESS)", (at[row.value], 0.5), xycoords=("data", "axes fraction"), ha="center",
                        fontsize=8, color="tab:red", rotation=90)
        _reference_lines(ax, runs, experiment, key)
        if key.endswith((".au", ".kl", "_bleu")):   # never negative; an MI estimate can be, by its noise
            ax.set_ylim(bottom=0.0)
        if far is not None:   # the axis stops above the rest; the far setting is an arrow there, its numbers printed
            row, low, high = stats.loc[far[0]], far[1], far[2]
            bottom = max(ax.get_ylim()[0], low - 0.15 * (high - low))
            top = high + 0.15 * (high - low)
            edge = top + 0.1 * (top - bottom)
            ax.axhspan(top, top + 0.3 * (top - bottom), color="0.92", linewidth=0, zorder=0)
            ax.set_ylim(bottom, top + 0.3 * (top - bottom))
            ax.set_yticks([t for t in ax.get_yticks() if bottom <= t <= top])
            ax.plot([at[row["value"]]], [edge], marker="^", color="tab:blue", linestyle="none")
            interval = f" [{row['mean'] - row['low']:.{digits}f}, {row['mean'] + row['high']:.{digits}f}]" \
                if row["low"] or row["high"] else ""
            right = list(at).index(row["value"]) >= len(at) / 2   # its numbers toward the middle of the panel
            ax.annotate(f"{row['mean']:.{digits}f}{interval}", (at[row["value"]], edge), textcoords="offset points",
                        xytext=(-6 if right else 6, 0), ha="right" if right else "left", va="center", fontsize=7,
                        color="tab:blue")
            arrows = True
        _x_axis(ax, at, factor_label, names)
        ax.set_ylabel(metric(key).axis, fontsize=9)
        handles, _ = ax.get_legend_handles_labels()
        if len(handles) > 1:
            ax.legend(loc="best", fontsize=7)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    counts = runs[runs.experiment == experiment].groupby(["kind", "value"], dropna=False)["seed"].nunique()
    seeds = "–".join(str(n) for n in sorted({int(counts.min()), int(counts.max())})) if len(counts) else "0"
    fig.suptitle(f"Validation metrics against {factor_label}: mean over {seeds} seed{'' if seeds == '1' else 's'} per setting with a 95% t "
                 f"interval over seeds, the LM baseline dashed and its seeds' range shaded\n(unpaired: for "
                 f"comparisons read the paired differences, in the tables and their own figure"
                 + ("; a setting far above the rest is an arrow in the grey band, its mean and interval printed"
                    if arrows else "") + ")", fontsize=10)
    fig.tight_layout()
    return fig


def _beside(grid: dict[float, float], count: int, names=None) -> list[float]:
    """Axis positions for `count` rows beside a factor's grid (another family compared with it): one step past
    its last value each, the step a factor of the grid's own scale."""
    values = sorted(grid)
    if names or not values:
        return [(values[-1] if values else -1) + 1.0 + i for i in range(count)]
    if _scale(values)[0] == "symlog":
        return [values[-1] * 4.0 ** (i + 1) for i in range(count)]
    step = (values[-1] - values[0]) / max(len(values) - 1, 1) or 1.0
    return [values[-1] + step * (i + 1) for i in range(count)]


def paired_differences(frame: pd.DataFrame, *, factor_label: str, margin: float, names=None):
    """What the likelihood table says, drawn: each setting's IW-NLL minus the LM's and minus the reference
    setting's, paired per seed and per sentence, with the table's 95% interval (`gptvae.report.differences`)
    and its word. The ±margin band is where a difference *ties*. Absolute values with bars over seeds
    (the metrics figure) cannot show this: the seed effect shared by both settings cancels only when paired.
    A setting the estimator cannot support keeps its place on the axis, marked n/a; a row of another family
    (frame.name set) is drawn beside the grid, past a dotted line, under its own name."""
    frame = frame.assign(name=frame["name"] if "name" in frame else None)
    panels = list(dict.fromkeys(frame["against"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 0.8 * frame["name"].nunique(), 3.8),
                             squeeze=False)
    grid = frame[frame["name"].isna()]
    at = _positions(grid["value"])
    others = list(dict.fromkeys(frame["name"].dropna()))
    arrows = False   # whether any panel drew a difference beyond its axis
    spots = dict(zip(others, _beside(at, len(others), names)))

    def x(row) -> float:
        return spots[row.name] if isinstance(row.name, str) else at[row.value]

    for ax, against in zip(axes.flat, panels):
        part = frame[frame["against"] == against]
        part = pd.concat([part[part["name"].isna()].sort_values("value"), part[part["name"].notna()]])
        known = part[part["estimate"].notna()]
        ax.axhspan(-margin, margin, color="tab:green", alpha=0.12, linewidth=0, label=f"ties (±{margin:g})")
        ax.axhline(0, color="0.35", linewidth=0.8)
        # a linear axis, zoomed on the differences near the tie band when a large one beside them would flatten
        # them; a difference beyond the window is an arrow at its edge with its numbers printed (no log scale,
        # which would draw the band and an interval's two halves at different scales)
        small = known[known["estimate"].abs() <= 10 * margin]
        limit = None
        if (known["estimate"].abs() > 20 * margin).any():
            limit = 1.3 * max(3 * margin, float(small[["low", "high"]].abs().to_numpy().max()) if len(small) else 0.0)
        inside = known if limit is None else known[(known["low"] >= -limit) & (known["high"] <= limit)]
        ax.errorbar([x(r) for r in inside.itertuples()], inside["estimate"],
                    yerr=[inside["estimate"] - inside["low"], inside["high"] - inside["estimate"]],
                    marker="o", linestyle="none", capsize=3, color="tab:blue", label="paired difference, 95%")
        beyond = 0   # off-scale differences so far: their labels alternate between two rows of the band
        for i, row in enumerate(part.itertuples()):   # neighbours' words alternate above and below their bars
            if pd.isna(row.estimate):   # the estimator cannot support it: its place on the axis, marked
                ax.annotate(row.word, (x(row), 0.5), xycoords=("data", "axes fraction"), ha="center",
                            va="center", fontsize=8, color="tab:red", rotation=90)
                continue
            seeds = "" if "seed" in row.word else f"({row.seeds} seed{'s' * (row.seeds > 1)})"
            if row.Index in inside.index:
                above = i % 2 == 0
                ax.annotate(f"{row.word}\n{seeds}".strip(), (x(row), row.high if above else row.low),
                            textcoords="offset points", xytext=(0, 4 if above else -4), ha="center",
                            va="bottom" if above else "top", fontsize=7)
                continue
            up, arrows = row.estimate > 0, True
            edge = 1.06 * limit * (1 if up else -1)
            ax.plot([x(row)], [edge], marker="^" if up else "v", color="tab:blue", linestyle="none")
            lift = 4 + 22 * (beyond % 2)
            beyond += 1
            ax.annotate(f"{row.word} {seeds}".strip() + f"\n{row.estimate:+.3f} [{row.low:.3f}, {row.high:.3f}]",
                        (x(row), edge), textcoords="offset points", xytext=(0, lift if up else -lift),
                        ha="center", va="bottom" if up else "top", fontsize=6.5, color="tab:blue")
        _x_axis(ax, at, factor_label, names)
        if spots:   # the rows of another family, past a dotted line, under their names
            ticks, labels = list(ax.get_xticks()), [t.get_text() for t in ax.get_xticklabels()]
            ax.set_xticks(ticks + list(spots.values()))
            ax.set_xticklabels(labels + [name.replace(", ", ",\n", 1) for name in spots], fontsize=9)
            for label in ax.get_xticklabels()[len(ticks):]:
                label.set_rotation(0)
            last, first = max(at) if at else 0.0, min(spots.values())
            middle = (last * first) ** 0.5 if ax.get_xscale() == "symlog" and last > 0 else (last + first) / 2
            ax.axvline(middle, color="0.6", linestyle=":", linewidth=1)
            left = ax.get_xlim()[0]
            far = max(spots.values())
            ax.set_xlim(left, far * 1.6 if ax.get_xscale() == "symlog" else far + 0.5 * (far - middle) + 0.5)
        if limit is not None:   # the axis to ±limit, and a shaded band beyond it for what lies further out
            out = known.drop(inside.index)
            top = 2.4 * limit if (out["estimate"] > 0).any() else limit
            bottom = -2.4 * limit if (out["estimate"] < 0).any() else -limit
            for lo, hi in ((limit, top), (bottom, -limit)):
                if hi > lo:
                    ax.axhspan(lo, hi, color="0.92", linewidth=0, zorder=0)
            ax.set_ylim(bottom, top)
            ax.set_yticks([t for t in ax.get_yticks() if -limit <= t <= limit])
        ax.set_ylabel(f"IW-NLL minus {against} (nats/token)", fontsize=9)
        if limit is None:
            ax.margins(y=0.25)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    notes = ([] if not arrows else ["a difference beyond the axis is an arrow in the grey band, its numbers printed"]) \
        + ([] if not frame["estimate"].isna().any() else ["n/a: the estimator cannot support it"])
    fig.suptitle("Paired differences in IW-NLL on validation (per seed and per sentence), 95% intervals"
                 + (f"\n({'; '.join(notes)})" if notes else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def rate_distortion(runs: pd.DataFrame, experiment: str, *, factor_label: str, names=None):
    """KL (rate) against Rec (distortion), one point per setting, labelled with the factor's value."""
    kl, rec = _by_value(runs, experiment, "valid.kl"), _by_value(runs, experiment, "valid.rec")
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    ax.errorbar(kl["mean"], rec["mean"], xerr=[kl["low"], kl["high"]], yerr=[rec["low"], rec["high"]], marker="o",
                linestyle="-" if not names else "none", capsize=3)
    base = _baseline(runs, experiment, "valid.rec")
    if base is not None:   # -ELBO = Rec + KL equal to the LM's NLL: points above the line have a looser bound
        # up to Rec = 0: a distortion (a negative log-likelihood of tokens) is never negative
        rate = np.linspace(0, min(max(float(kl["mean"].max()), 1e-3) * 1.05, base[0]), 200)
        ax.plot(rate, base[0] - rate, color="0.35", linestyle="--", linewidth=1, label="Rec + KL = LM NLL")
        ax.legend(loc="best")
    top = float((kl["mean"] + kl["high"]).max()) if len(kl) else 0.0
    if top > 20:   # rates from ~0 to hundreds of nats: a symmetric log axis keeps the small ones apart
        ax.set_xscale("symlog", linthresh=1.0)
    low, high = ax.get_ylim()   # a distortion is never negative, but settings far above 0 keep their detail
    ax.set_ylim(max(low, 0.0), high)
    # labels are placed once the axes are final, by where the points land on the page: points within 20
    # pixels of each other (collapsed settings, or 0 and 1/64 on a log axis) stack their labels on leader
    # lines; elsewhere neighbours along the rate axis alternate above and below the curve
    ax.autoscale_view()
    page = ax.transData.transform(np.column_stack([kl["mean"].to_numpy(), rec["mean"].to_numpy()]))
    order = np.argsort(page[:, 0], kind="stable")
    rank = {int(i): r for r, i in enumerate(order)}
    for i, (value, x, y) in enumerate(zip(kl["value"], kl["mean"], rec["mean"])):
        near = np.flatnonzero(np.hypot(*(page - page[i]).T) < 20)
        if len(near) > 1:   # away from the nearer edge of the axes: below a point in the upper half
            place = sorted(near, key=lambda j: rank[int(j)]).index(i)
            down = ax.transAxes.inverted().transform(page[i])[1] > 0.5
            offset = (10 + 6 * place, -(14 + 13 * place) if down else 10 + 13 * place)
        else:
            offset = (6, 8) if rank[i] % 2 == 0 else (6, -14)
        ax.annotate(_name(value, names), (x, y), textcoords="offset points", xytext=offset, fontsize=9,
                    arrowprops=dict(arrowstyle="-", color="0.6", linewidth=0.5))
    ax.set_xlabel("rate: KL (nats/sequence)" + (", symlog scale" if top > 20 else ""))
    ax.set_ylabel("distortion: Rec (nats/sequence)")
    ax.set_title(f"Rate against distortion (points labelled with {factor_label})")
    fig.tight_layout()
    return fig


def training_curves(history: pd.DataFrame, runs: pd.DataFrame, experiment: str, *, factor_label: str,
                    keys=("val/nll_bound_per_token", "val/kl", "val/au"), names=None):
    """The validation bound (where a plateau shows), KL and active units over training, one line per
    setting (mean over seeds, their range shaded), the LM's bound dashed."""
    vae = runs[(runs.experiment == experiment) & ~baseline_rows(runs)][["run_id", "value"]]
    curves = history.merge(vae.rename(columns={"value": "setting"}), on="run_id")
    lms = set(runs.loc[runs.run_id.isin(vae.run_id), "kind"]) == {BASELINE}   # an LM grid: no KL, no AU
    keys = [k for k in keys if (curves.key == k).any() and not (lms and metric(k).latent_only)] or list(keys[:1])
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 4.3), squeeze=False)
    cmap = plt.get_cmap("viridis")
    values = sorted(vae["value"].unique())
    for ax, key in zip(axes.flat, keys):
        for i, value in enumerate(values):
            points = curves[(curves.key == key) & (curves.setting == value)]
            stats = points.groupby("step")["value"].agg(["mean", "min", "max", "count"])
            colour = cmap(0.85 * i / max(1, len(values) - 1))   # viridis' last yellow is hard to see on white
            ax.plot(stats.index, stats["mean"], color=colour, label=_name(value, names))
            if (stats["count"] > 1).any():   # seeds as a band: their range
                ax.fill_between(stats.index, stats["min"], stats["max"], color=colour, alpha=0.2, linewidth=0)
        if key == "val/nll_bound_per_token":
            lm = runs[(runs.experiment == experiment) & baseline_rows(runs)][["run_id"]]
            points = history[(history.key == key) & history.run_id.isin(lm.run_id)]
            if not points.empty:
                ax.plot(*zip(*points.groupby("step")["value"].mean().items()), color="black", linestyle="--",
                        linewidth=1.2, label="LM baseline", zorder=5)   # on top: it runs close to a collapsed VAE
        if key in ("val/au", "val/kl"):
            ax.set_ylim(bottom=0)
        if key == "val/kl" and not curves.empty:   # the KL a schedule's ramp settles to, not its excursion at β ≈ 0
            shown = curves[curves.key == key]
            late = shown[shown.step >= 0.5 * shown.step.max()]["value"]
            if not late.empty and float(shown["value"].max()) > 2 * float(late.max()):
                ax.set_ylim(0, 1.1 * float(late.max()) + 1e-3)
                ax.set_title("(the range of the second half of training; earlier steps lie above it)", fontsize=8)
        if key == "val/nll_bound_per_token" and not curves.empty:   # the plateau, not the first steps' fall
            shown = history[(history.key == key) & history.run_id.isin(runs[runs.experiment == experiment].run_id)]
            late = shown[shown.step >= 0.5 * shown.step.max()]["value"]   # after any KL schedule's ramp
            if not late.empty:
                pad = 0.05 * float(late.max() - late.min()) + 1e-3
                ax.set_ylim(float(late.min()) - pad, float(late.max()) + pad)
                if float(shown["value"].max()) > float(late.max()) + pad:
                    ax.set_title("(the range of the second half of training; earlier steps lie above it)", fontsize=8)
        ax.set_xlabel("training step")
        ax.set_ylabel(metric(key).axis)
    handles = {label: handle for ax in axes.flat for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), title=factor_label, loc="lower center", ncol=min(len(handles), 6),
               frameon=False)   # below the panels, so that it hides no curve
    counts = curves[["setting", "run_id"]].drop_duplicates().groupby("setting").size() if not curves.empty else []
    seeds = "–".join(str(n) for n in sorted({int(min(counts)), int(max(counts))})) if len(counts) else "0"
    shown = {"val/nll_bound_per_token": "the validation bound (-ELBO)", "val/kl": "KL", "val/au": "active units"}
    what = [shown.get(k, metric(k).axis) for k in keys]
    what = what[0] if len(what) == 1 else ", ".join(what[:-1]) + " and " + what[-1]
    fig.suptitle(f"Training: {what} (mean and range over {seeds} seed{'' if seeds == '1' else 's'} per setting)")
    rows = 1 + (len(handles) - 1) // 6
    fig.tight_layout(rect=(0, 0.06 + 0.04 * rows, 1, 1))
    return fig


def posterior_means(means: pd.DataFrame, runs: pd.DataFrame, experiment: str, *, label: str, symbol: str,
                    ncols: int = 3, names=None):
    """2-D PCA of posterior means on validation sentences, one panel per setting, coloured by a label."""
    vae = runs[(runs.experiment == experiment) & (runs.kind != BASELINE)].sort_values(["value", "seed"])
    vae = vae.drop_duplicates(["value"])   # the first seed of each setting
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
        ax.set_title(f"{symbol} = {_name(value, names)}")
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


def unit_information(units: pd.DataFrame, runs: pd.DataFrame, experiment: str, *, factor_label: str, names=None,
                     split: str = "valid"):
    """MI of each latent unit alone, sorted from the most informative, one line per setting (the mean over
    seeds at each rank): how many units carry the information, where AU counts every unit held at a floor."""
    vae = runs[(runs.experiment == experiment) & (runs.kind != BASELINE)][["run_id", "value"]]
    rows = units[(units.split == split) & units.run_id.isin(vae.run_id)].merge(vae, on="run_id")
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    cmap = plt.get_cmap("viridis")
    values = sorted(rows["value"].unique())
    for i, value in enumerate(values):
        ranked = [group.mi.sort_values(ascending=False).to_numpy()
                  for _, group in rows[rows["value"] == value].groupby("run_id")]
        curve = np.mean(np.stack(ranked), axis=0)
        ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", markersize=2.5,
                color=cmap(i / max(1, len(values) - 1)), label=_name(value, names))
    ax.set_xlabel("latent unit, by its MI (rank)")
    ax.set_ylabel("MI of the unit alone (nats)")
    ax.axhline(0, color="0.6", linewidth=0.6)
    ax.legend(title=factor_label, loc="best", fontsize=8)
    ax.set_title("Per-unit MI, units sorted (mean over seeds at each rank)", fontsize=10)
    fig.tight_layout()
    return fig


def k_sweep(ksweep: pd.DataFrame, labels: dict[str, str]):
    """IW-NLL per token against the number of importance samples K (log axis), one line per setting (the
    mean over its seeds), from `evaluate --k-sweep` (nested estimates from one set of samples: their
    expectation falls with K, one realisation need not). labels: run id -> setting; runs not in it are
    left out. At K = 1 the
    estimate is a one-sample ELBO; the gap to the largest K is how loose the bound in the tables is."""
    frame = ksweep[ksweep.run_id.isin(labels)].assign(setting=lambda f: f.run_id.map(labels))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    order = list(dict.fromkeys(labels[r] for r in frame.run_id.drop_duplicates()))
    cmap = plt.get_cmap("tab10")
    for i, setting in enumerate(order):
        part = frame[frame.setting == setting]
        mean = part.groupby("K")["iw_nll_per_token"].agg(["mean", "min", "max", "count"])
        lm = "LM" in setting
        seeds = int(mean["count"].max())
        ax.plot(mean.index, mean["mean"], marker="" if lm else "o", markersize=3,
                linestyle="--" if lm else "-", color="0.35" if lm else cmap(i % 10),
                label=f"{setting} ({seeds} seed{'s' * (seeds > 1)})")
        if (mean["count"] > 1).any():
            ax.fill_between(mean.index, mean["min"], mean["max"], alpha=0.15, linewidth=0,
                            color="0.35" if lm else cmap(i % 10))
    ax.set_xscale("log")
    ax.set_xlabel("importance samples K (log scale)")
    ax.set_ylabel("IW-NLL (nats/token)")
    n = int(frame.n_sequences.max()) if not frame.empty else 0
    ax.set_title(f"How loose the bound is: IW-NLL against K ({n} validation sentences)", fontsize=10)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
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
