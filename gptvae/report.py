"""Tables, figures and the paper, from exported results only (never from the store).

The notebook analysis/ablation.py calls `ablation_report` once per spec; `make paper` calls
`render_paper`. Tables and inline numbers in the paper come from the same functions, so they always
agree with the notebooks. Labels and symbols come from the specs, names and digits of metrics from
`gptvae.catalog`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gptvae import plots
from gptvae.catalog import TABLE
from gptvae.families import BASELINE
from gptvae.files import atomic_write_text
from gptvae.results import format_table, load_results, load_sentences, summarize
from gptvae.stats import Interval, paired, verdict
from gptvae.sweep import SweepSpec, load_specs

ROOT = Path(__file__).resolve().parents[1]


def paths(preset: str | None = None) -> dict[str, Path]:
    """Where specs and results are read and figures/tables written: env vars set by the Makefile, else defaults."""
    preset = preset or os.environ.get("PRESET", "cpu")
    root = Path(os.environ.get("GPTVAE_PAPER_DIR", ROOT / "paper"))
    return {"results": Path(os.environ.get("GPTVAE_RESULTS", root / "results" / preset)),
            "figures": Path(os.environ.get("GPTVAE_FIGURES", root / "figures" / preset)),
            "tables": Path(os.environ.get("GPTVAE_TABLES", root / "tables" / preset)),
            "experiments": Path(os.environ.get("GPTVAE_EXPERIMENTS", ROOT / "experiments"))}


def specs(where: dict[str, Path] | None = None) -> dict[str, SweepSpec]:
    """The ablation catalogue: experiment name -> spec, for every spec in the experiments folder."""
    folder = (where or paths()).get("experiments", ROOT / "experiments")
    return {spec.experiment: spec for spec in load_specs(folder)}


def _spec(name: str, where) -> SweepSpec:
    catalogue = specs(where)
    experiment = name if name.startswith("ablation-") else f"ablation-{name}"
    if experiment not in catalogue:
        raise KeyError(f"no spec for {name!r}; specs: {', '.join(s.name for s in catalogue.values())}")
    return catalogue[experiment]


MARGIN = 0.005       # nats per token: differences inside +- this, with an interval inside it too, "tie"
ESS_FLOOR = 2.0      # median effective sample size below which an IW-NLL is not an estimate


def _setting_rows(runs: pd.DataFrame, spec: SweepSpec) -> list[tuple[str, object, pd.DataFrame]]:
    """(label, value, runs of that setting) for every setting of a spec in grid order, the LM last."""
    mine = runs[runs.experiment == spec.experiment]
    out = []
    for value in spec.values:
        rows = mine[(mine.kind != BASELINE) & (mine.setting.astype(str) == str(value))]
        if not rows.empty:
            out.append((spec.setting(value), value, rows))
    lm = mine[mine.kind == BASELINE]
    if not lm.empty:
        out.append(("LM baseline", None, lm))
    return out


def _per_seed(rows: pd.DataFrame, results_dir: Path, split: str) -> dict[int, pd.DataFrame]:
    out = {}
    for row in rows.itertuples():
        frame = load_sentences(results_dir, row.run_id, split)
        if frame is not None:
            out[int(row.seed)] = frame
    return out


def _not_estimable(rows: pd.DataFrame, split: str) -> str | None:
    """Why the IW-NLL of these runs is no estimate (None when it is): its weights' median ESS."""
    key = f"{split}.iw_ess_median"
    if key not in rows or rows[key].isna().all():
        return None
    ess = float(rows[key].min())
    if ess < ESS_FLOOR:
        k = int(rows[f"{split}.iw_samples"].iloc[0]) if f"{split}.iw_samples" in rows else "K"
        return f"n/a: ESS {ess:.1f} of {k}"
    return None


def comparison_table(runs: pd.DataFrame, spec: SweepSpec, results_dir: Path, *, split: str = "valid") -> str:
    """The ablation's likelihood table: per setting the IW-NLL (nats/token) with its 95% interval, and the
    paired differences (per seed, per sentence) against the spec's reference setting and the LM, each
    with its interval and the word it licenses; then the bound and the NLL with the latent masked."""
    settings = _setting_rows(runs, spec)
    data = {label: _per_seed(rows, results_dir, split) for label, _, rows in settings}
    by_label = {label: rows for label, _, rows in settings}
    reference = spec.setting(spec.reference_value)
    header = [spec.label, "seeds", "IW-NLL", f"vs {reference}", "vs LM", "-ELBO", "NLL, z masked", "converged"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, _, rows in settings:
        seeds = data[label]
        if not seeds:
            lines.append(f"| {label} | {len(rows)} | no per-sentence results exported | | | | | |")
            continue
        reason = _not_estimable(rows, split)
        iw = reason or paired(seeds, None, "iw_nll", per_token=True).format(3)

        def versus(other: str) -> str:
            if other == label or not data.get(other) or reason or _not_estimable(by_label[other], split):
                return "–"
            diff = paired(seeds, data[other], "iw_nll", per_token=True)
            return f"{diff.format(3, signed=True)} {verdict(diff, margin=MARGIN)}"

        cells = [label, str(len(seeds)), iw, versus(reference), versus("LM baseline"),
                 paired(seeds, None, "neg_elbo", per_token=True).format(3),
                 paired(seeds, None, "lm_nll", per_token=True).format(3),
                 _converged(rows)]
        lines.append("| " + " | ".join(cells) + " |")
    return ("\n".join(lines) + "\n\n" + f"Nats per token on {split} ({_sentences(data)} sentences per run): the mean over "
            f"seeds with a 95% interval from a bootstrap over seeds and sentences; differences are paired per seed and "
            f"per sentence. Words: *costs* / *buys* when the interval excludes 0, *ties* when it lies within "
            f"±{MARGIN} nats/token, else *not resolved*. With {_seed_count(data)} seed(s), resampling seeds sees "
            f"few values of the seed effect: the intervals are optimistic about seeds. An IW-NLL whose importance "
            f"weights have a median effective sample size "
            f"below {ESS_FLOOR:g} is not an estimate and prints as n/a.\n")


def _seed_count(data) -> str:
    counts = {len(seeds) for seeds in data.values() if seeds}
    return "/".join(str(n) for n in sorted(counts)) or "0"


def _sentences(data) -> str:
    sizes = {len(frame) for seeds in data.values() for frame in seeds.values()}
    return "/".join(str(n) for n in sorted(sizes)) or "0"


def _converged(rows: pd.DataFrame) -> str:
    if "train.converged" not in rows or rows["train.converged"].isna().all():
        return "not judged"
    done = int(rows["train.converged"].fillna(0).sum())
    return f"{done}/{len(rows)}"


def ablation_table(runs: pd.DataFrame, spec: SweepSpec) -> str:
    rows = runs[runs.experiment == spec.experiment]
    metrics = [k for k in TABLE if k in runs and rows[k].notna().any()]
    table = format_table(summarize(runs, spec.experiment, metrics), metrics, factor_label=spec.label)
    return table + f"\nMLflow runs: {len(rows.run_id)} (listed in the appendix). Nats per sequence unless marked.\n"


def samples_table(samples: pd.DataFrame, runs: pd.DataFrame, spec: SweepSpec) -> str:
    """Decoded samples of each setting (first seed), as Markdown sections."""
    rows = runs[runs.experiment == spec.experiment].drop_duplicates(["kind", "value"])
    lines = []
    for row in rows.itertuples():
        setting = "LM baseline" if row.kind == BASELINE else f"{spec.label} = {row.value:g}"
        lines.append(f"### {setting} (run `{row.run_id}`)\n")
        for section, group in samples[samples.run_id == row.run_id].groupby("section", sort=False):
            lines.append(f"*{section}*\n")
            lines += [f"- {text}" for text in group.text]
            lines.append("")
    return "\n".join(lines)


def ablation_report(name: str, *, where: dict[str, Path] | None = None) -> tuple[str, list[Path]]:
    """Write the table, samples and figures of one ablation ("kl-floor" or "ablation-kl-floor").
    Returns the Markdown table and the PNGs."""
    where = where or paths()
    spec = _spec(name, where)
    res = load_results(where["results"])
    runs = res["runs"]
    if (runs.experiment == spec.experiment).sum() == 0:   # sweeps run in pieces: say what to run, draw nothing
        return (f"*{spec.experiment} has no finished runs in {where['results']}: run `make {spec.experiment}` "
                f"with the same PRESET, then `make results`.*\n"), []
    table = ablation_table(runs, spec)
    atomic_write_text(where["tables"] / f"{spec.name}.md", table)
    if "setting" in runs:   # exports since per-sentence results: the paired comparison
        atomic_write_text(where["tables"] / f"{spec.name}_likelihood.md",
                          comparison_table(runs, spec, where["results"]))
    atomic_write_text(where["tables"] / f"{spec.name}_samples.md", samples_table(res["samples"], runs, spec))

    figures = {
        "metrics": plots.metrics_vs_factor(runs, spec.experiment, factor_label=spec.label),
        "rate_distortion": plots.rate_distortion(runs, spec.experiment, factor_label=spec.label),
        "curves": plots.training_curves(res["history"], runs, spec.experiment, factor_label=spec.label),
    }
    points = res["posterior_means"]
    label_column = next((c for c in ("sentiment", "position") if c in points), None)
    shown = runs[(runs.experiment == spec.experiment) & (runs.kind != BASELINE)].run_id
    if label_column and points.run_id.isin(shown).any():   # runs trained before runs logged them have none
        figures["posterior"] = plots.posterior_means(res["posterior_means"], runs, spec.experiment,
                                                     label=label_column, symbol=spec.symbol)
    pngs = [plots.save(fig, f"{spec.name}_{kind}", where["figures"])[0] for kind, fig in figures.items()]
    return table, pngs


def overview_table(runs: pd.DataFrame) -> str:
    """Runs per ablation: settings, seeds, preset and dataset."""
    lines = ["| ablation | settings | seeds | runs | preset | dataset |", "|---|---|---|---|---|---|"]
    for experiment, group in runs.groupby("experiment", sort=True):
        settings = group.drop_duplicates(["kind", "value"]).shape[0]
        lines.append(f"| {experiment} | {settings} (incl. LM) | {group.seed.nunique()} | {len(group)} | "
                     f"{', '.join(sorted(group.preset.unique()))} | {', '.join(sorted(group.dataset.unique()))} |")
    return "\n".join(lines) + "\n"


# the paper

APPENDIX_MARK = "<!-- appendix: run ids -->"


@dataclass(frozen=True)
class Comparison:
    """A paired difference and the word it licenses, as the paper prints them."""

    interval: Interval
    word: str

    def __str__(self) -> str:
        return self.word if math.isnan(self.interval.estimate) else self.interval.format(3, signed=True)


class PaperContext:
    """What paper/paper.md may call: tables, figures, single numbers with their run ids, the appendix."""

    def __init__(self, where: dict[str, Path], out_dir: Path):
        self.where, self.out_dir = where, out_dir
        self.runs = load_results(where["results"])["runs"]
        self.specs = specs(where)
        self.cited: dict[str, set[str]] = {}

    def _rel(self, path: Path) -> str:
        return os.path.relpath(path, self.out_dir)

    def table(self, name: str) -> str:
        path = self.where["tables"] / f"{name}.md"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `make figures` first")
        experiment = f"ablation-{name}"
        if experiment in self.specs:
            self.cited.setdefault(experiment, set()).update(self.runs[self.runs.experiment == experiment].run_id)
        return path.read_text()

    def figure(self, name: str, caption: str) -> str:
        path = self.where["figures"] / f"{name}.png"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `make figures` first")
        return f"![{caption}]({self._rel(path)})\n\n*{caption}*"

    def value(self, experiment: str, metric: str, setting=None, *, digits: int = 2) -> str:
        """'mean ± std' of a metric at one setting (None: the LM baseline), run ids recorded for the appendix."""
        runs = self.runs[self.runs.experiment == experiment]
        rows = runs[runs.kind == BASELINE] if setting is None else \
            runs[(runs.kind != BASELINE) & (runs.value == float(setting))]
        if rows.empty or metric not in rows or rows[metric].isna().all():
            raise KeyError(f"no {metric} for {experiment} at {setting!r} in the exported results")
        self.cited.setdefault(experiment, set()).update(rows.run_id)
        mean, std = rows[metric].mean(), rows[metric].std()
        return f"{mean:.{digits}f}" + ("" if pd.isna(std) else f" ± {std:.{digits}f}")

    def has_value(self, experiment: str, metric: str, setting=None) -> bool:
        """Whether value() has a number here, e.g. a test-split metric only some runs were evaluated on."""
        try:
            self.value(experiment, metric, setting)
        except KeyError:
            return False
        return True

    def const(self, key: str, experiment: str | None = None, *, kind: str = "vae"):
        """A setup constant from the runs' logged configs (e.g. 'model.dim', 'train.steps'): the one value
        every run of that kind (in that experiment) logged; two values are an error, never a guess."""
        rows = self.runs if experiment is None else self.runs[self.runs.experiment == experiment]
        rows = rows[rows.kind == kind] if kind else rows
        if key not in rows or rows[key].isna().all():
            raise KeyError(f"no logged {key} in the exported runs")
        values = rows[key].dropna().unique()
        if len(values) > 1:
            raise KeyError(f"the exported runs logged {key} as {sorted(map(str, values))}: not one constant")
        value = values[0]
        return int(value) if isinstance(value, float) and value.is_integer() else value

    def compare(self, experiment: str, setting, against="reference", *, column: str = "iw_nll",
                per_token: bool = True, split: str = "valid", higher_is_worse: bool = True) -> "Comparison":
        """The paired difference setting - against (against: "reference", "lm", or another setting) of a
        per-sentence column, with its interval and the word it licenses; run ids recorded for the appendix."""
        spec = self.specs[experiment]
        runs = self.runs[self.runs.experiment == experiment]

        def rows_of(which):
            if which == "lm" or which is None:
                return runs[runs.kind == BASELINE]
            value = spec.reference_value if which == "reference" else which
            return runs[(runs.kind != BASELINE) & (runs.setting.astype(str) == str(value))]

        a, b = rows_of(setting), rows_of(against)
        if a.empty or b.empty:
            raise KeyError(f"{experiment}: no exported runs for {setting!r} or {against!r}")
        self.cited.setdefault(experiment, set()).update(a.run_id, b.run_id)
        reason = column == "iw_nll" and (_not_estimable(a, split) or _not_estimable(b, split))
        if reason:   # no estimate, no word
            return Comparison(Interval(math.nan, math.nan, math.nan, 0, 0), reason)
        diff = paired(_per_seed(a, self.where["results"], split), _per_seed(b, self.where["results"], split),
                      column, per_token=per_token)
        return Comparison(diff, verdict(diff, margin=MARGIN, higher_is_worse=higher_is_worse))

    def has(self, experiment: str) -> bool:
        return bool((self.runs.experiment == experiment).any())

    def count(self, experiment: str, column: str) -> int:
        """Distinct values of a column in an experiment's runs (e.g. 'seed', 'run_id')."""
        return int(self.runs[self.runs.experiment == experiment][column].nunique())

    def seeds(self, experiment: str) -> int:
        return int(self.runs[self.runs.experiment == experiment].seed.nunique())

    def ablations(self) -> list[SweepSpec]:
        """Every spec whose sweep has exported runs, by name: the paper's generic sections loop over these."""
        return [spec for spec in sorted(self.specs.values(), key=lambda s: s.name) if self.has(spec.experiment)]

    def appendix(self) -> str:
        lines = []
        for experiment in sorted(self.cited):
            spec = self.specs.get(experiment)
            runs = self.runs[(self.runs.experiment == experiment) & self.runs.run_id.isin(self.cited[experiment])]
            lines += [f"### {experiment}", "", "| setting | seed | MLflow run id | trained in |", "|---|---|---|---|"]
            for row in runs.itertuples():
                setting = "LM baseline" if row.kind == BASELINE else \
                    f"{spec.symbol if spec else 'value'} = {row.value:g}"
                lines.append(f"| {setting} | {row.seed} | `{row.run_id}` | {row.trained_in} |")
            lines.append("")
        return "\n".join(lines)


def render_paper(source: Path, out_dir: Path, *, where: dict[str, Path] | None = None) -> tuple[Path, Path]:
    """paper.md (a Jinja2 template) -> out_dir/paper.md with every number filled in -> out_dir/paper.html."""
    import jinja2
    import markdown

    where = where or paths()
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = PaperContext(where, out_dir)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                             lstrip_blocks=True)
    template = env.from_string(source.read_text())
    body = template.render(table=ctx.table, figure=ctx.figure, value=ctx.value, seeds=ctx.seeds, has=ctx.has,
                           has_value=ctx.has_value, count=ctx.count, ablations=ctx.ablations, const=ctx.const,
                           compare=ctx.compare)
    text = body.replace(APPENDIX_MARK, ctx.appendix())   # after rendering: only then are all citations known
    md_path = atomic_write_text(out_dir / "paper.md", text)
    html = markdown.markdown(text, extensions=["tables", "toc", "fenced_code"])
    page = ("<!doctype html>\n<html><head><meta charset='utf-8'><title>gptvae</title>"
            "<style>body{max-width:52rem;margin:2rem auto;font-family:Georgia,serif;line-height:1.5;padding:0 1rem}"
            "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:2px 6px}"
            "img{max-width:100%}code{font-size:0.85em}</style></head><body>\n" + html + "\n</body></html>\n")
    html_path = atomic_write_text(out_dir / "paper.html", page)
    return md_path, html_path
