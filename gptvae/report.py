"""Tables, figures and the paper, from exported results only (never from the store).

The notebooks in analysis/ call `ablation_report`; `make paper` calls `render_paper`. Tables and
inline numbers in the paper come from the same functions, so they always agree with the notebooks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from gptvae import plots
from gptvae.results import format_table, load_results, summarize

# experiment -> the factor's label on axes and in tables
ABLATIONS = {
    "ablation-kl-weight": "β (KL weight)",
    "ablation-kl-floor": "λ (free bits, nats/dim)",
    "ablation-latent-dropout": "latent dropout p",
    "ablation-latent-dim": "latent size D",
}
SYMBOLS = {"ablation-kl-weight": "β", "ablation-kl-floor": "λ", "ablation-latent-dropout": "p",
           "ablation-latent-dim": "D"}
TABLE_METRICS = {
    "valid.neg_elbo": "-ELBO", "valid.rec": "Rec", "valid.kl": "KL", "valid.mi": "MI", "valid.au": "AU",
    "valid.iw_nll": "IW-NLL", "valid.ppl": "PPL", "valid.lm_nll": "NLL (z masked)",
    "valid.probe_acc_sentiment": "probe acc.",
}


def paths(preset: str | None = None) -> dict[str, Path]:
    """Where results are read and figures/tables written: env vars set by the Makefile, else defaults."""
    preset = preset or os.environ.get("PRESET", "cpu")
    root = Path(os.environ.get("GPTVAE_PAPER_DIR", Path(__file__).resolve().parents[1] / "paper"))
    return {"results": Path(os.environ.get("GPTVAE_RESULTS", root / "results" / preset)),
            "figures": Path(os.environ.get("GPTVAE_FIGURES", root / "figures" / preset)),
            "tables": Path(os.environ.get("GPTVAE_TABLES", root / "tables" / preset))}


def write_text(path: Path, text: str) -> Path:
    from gptvae.train import atomic_write_bytes

    atomic_write_bytes(path, lambda h: h.write(text.encode()))
    return path


def ablation_table(runs: pd.DataFrame, experiment: str) -> str:
    metrics = {k: v for k, v in TABLE_METRICS.items() if k in runs and runs.loc[runs.experiment == experiment, k].notna().any()}
    table = format_table(summarize(runs, experiment, list(metrics)), metrics, factor_label=ABLATIONS[experiment],
                         digits={"valid.au": 1, "valid.ppl": 1})
    ids = runs[runs.experiment == experiment].run_id
    return table + f"\nMLflow runs: {len(ids)} (listed in the appendix). Nats per sequence unless marked.\n"


def samples_table(samples: pd.DataFrame, runs: pd.DataFrame, experiment: str) -> str:
    """Decoded samples of each setting (first seed), as Markdown sections."""
    rows = runs[runs.experiment == experiment].drop_duplicates(["kind", "value"])
    lines = []
    for row in rows.itertuples():
        setting = "LM baseline" if row.kind == "lm" else f"{ABLATIONS[experiment]} = {row.value:g}"
        lines.append(f"### {setting} (run `{row.run_id}`)\n")
        for section, group in samples[samples.run_id == row.run_id].groupby("section", sort=False):
            lines.append(f"*{section}*\n")
            lines += [f"- {text}" for text in group.text]
            lines.append("")
    return "\n".join(lines)


def ablation_report(experiment: str, *, where: dict[str, Path] | None = None) -> tuple[str, list[Path]]:
    """Write the table, samples and figures of one ablation. Returns the Markdown table and the PNGs."""
    where = where or paths()
    res = load_results(where["results"])
    runs, label = res["runs"], ABLATIONS[experiment]
    name = experiment.removeprefix("ablation-")
    if (runs.experiment == experiment).sum() == 0:   # sweeps run in pieces: say what to run, draw nothing
        return (f"*{experiment} has no finished runs in {where['results']}: run `make {experiment}` "
                f"with the same PRESET, then `make results`.*\n"), []
    table = ablation_table(runs, experiment)
    write_text(where["tables"] / f"{name}.md", table)
    write_text(where["tables"] / f"{name}_samples.md", samples_table(res["samples"], runs, experiment))

    figures = {
        "metrics": plots.metrics_vs_factor(runs, experiment, factor_label=label),
        "rate_distortion": plots.rate_distortion(runs, experiment, factor_label=label),
        "curves": plots.training_curves(res["history"], runs, experiment, factor_label=label),
    }
    label_column = next((c for c in ("sentiment", "position") if c in res["posterior_means"]), None)
    if label_column:
        figures["posterior"] = plots.posterior_means(res["posterior_means"], runs, experiment, label=label_column,
                                                     symbol=SYMBOLS[experiment])
    pngs = [plots.save(fig, f"{name}_{kind}", where["figures"])[0] for kind, fig in figures.items()]
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


class PaperContext:
    """What paper/paper.md may call: tables, figures, single numbers with their run ids, the appendix."""

    def __init__(self, where: dict[str, Path], out_dir: Path):
        self.where, self.out_dir = where, out_dir
        self.runs = load_results(where["results"])["runs"]
        self.cited: dict[str, set[str]] = {}

    def _rel(self, path: Path) -> str:
        return os.path.relpath(path, self.out_dir)

    def table(self, name: str) -> str:
        path = self.where["tables"] / f"{name}.md"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `make figures` first")
        experiment = f"ablation-{name}" if f"ablation-{name}" in ABLATIONS else None
        if experiment:
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
        rows = runs[runs.kind == "lm"] if setting is None else runs[(runs.kind == "vae") & (runs.value == float(setting))]
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

    def has(self, experiment: str) -> bool:
        return bool((self.runs.experiment == experiment).any())

    def count(self, experiment: str, column: str) -> int:
        """Distinct values of a column in an experiment's runs (e.g. 'seed', 'run_id')."""
        return int(self.runs[self.runs.experiment == experiment][column].nunique())

    def seeds(self, experiment: str) -> int:
        return int(self.runs[self.runs.experiment == experiment].seed.nunique())

    def appendix(self) -> str:
        lines = []
        for experiment in sorted(self.cited):
            runs = self.runs[(self.runs.experiment == experiment) & self.runs.run_id.isin(self.cited[experiment])]
            lines += [f"### {experiment}", "", "| setting | seed | MLflow run id | trained in |", "|---|---|---|---|"]
            for row in runs.itertuples():
                setting = "LM baseline" if row.kind == "lm" else f"{SYMBOLS[experiment]} = {row.value:g}"
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
                           has_value=ctx.has_value, count=ctx.count)
    text = body.replace(APPENDIX_MARK, ctx.appendix())   # after rendering: only then are all citations known
    md_path = write_text(out_dir / "paper.md", text)
    html = markdown.markdown(text, extensions=["tables", "toc", "fenced_code"])
    page = ("<!doctype html>\n<html><head><meta charset='utf-8'><title>gptvae</title>"
            "<style>body{max-width:52rem;margin:2rem auto;font-family:Georgia,serif;line-height:1.5;padding:0 1rem}"
            "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:2px 6px}"
            "img{max-width:100%}code{font-size:0.85em}</style></head><body>\n" + html + "\n</body></html>\n")
    html_path = write_text(out_dir / "paper.html", page)
    return md_path, html_path
