"""From a real (tiny) sweep to exported results, a notebook run headlessly, figures and the paper."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gptvae.evaluation import evaluate_logged_run, k_sweep_logged_run
from gptvae.report import ablation_report, overview_report, render_paper
from gptvae.results import FILES, OPTIONAL, ResultsMissingError, export_results, load_results, pca_2d
from gptvae.sweep import load_spec, run_sweep
from gptvae.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]
# the paper is about yelp (it cites the sentiment probe): the real corpus, at smoke size
FAST = ["data.dataset=yelp", "train.steps=4", "train.eval_every=2", "train.log_every=2", "train.val_sequences=40",
        "eval.max_sequences=40", "eval.num_samples=2", "eval.iw_samples=4", "eval.splits=valid,test"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    tracker = Tracker(f"sqlite:///{folder}/mlflow.db")
    spec = load_spec(ROOT / "experiments" / "kl_floor.toml")   # the real grid: the paper cites its values
    run_sweep(spec, preset_name="smoke", dataset=None, seeds=[0], overrides=FAST, runs_root=folder / "runs",
              tracker=tracker, progress=False)
    where = {"results": folder / "results", "figures": folder / "figures", "tables": folder / "tables"}
    # what a study's last piece adds on the training machine: a K sweep and an fp32 check of one run
    first = tracker.trained_runs("ablation-kl-floor", kind="vae")[0]
    k_sweep_logged_run(first, split="valid", ks=(1, 2, 4), max_sequences=8, tracker=tracker)
    evaluate_logged_run(first, split="valid", iw_samples=4, max_sequences=40, fp32=True, tracker=tracker)
    counts = export_results(where["results"], tracker=tracker, preset="smoke")
    return where, counts, tracker


def test_a_setting_read_back_from_csv_as_an_integer_is_still_its_setting():
    """latent-dropout's p = 0 rows are kl-floor runs linked from an earlier export, whose factor column CSV
    gave back as 0: they are the p = 0.0 row of the table, not missing from it."""
    import pandas as pd

    from gptvae.report import _is_setting

    settings = pd.Series(["0", "0.0", "0.5", "cyclical", ""])
    assert _is_setting(settings, 0.0).tolist() == [True, True, False, False, False]
    assert _is_setting(settings, 0.5).tolist() == [False, False, True, False, False]
    assert _is_setting(settings, "cyclical").tolist() == [False, False, False, True, False]


def test_a_grid_value_is_written_as_a_reader_would_write_it():
    """κ = 1/64 bit, not 0.015625: a power-of-two fraction that %g spells in six digits is written as the
    fraction; every other value as %g writes it, and a name as itself."""
    from gptvae.catalog import value_text
    from gptvae.sweep import load_spec

    assert [value_text(v) for v in (0.015625, 0.125, 1 / 3, 0.05, 1.225, 0.0, 64, 1.0, "cyclical")] == \
        ["1/64", "0.125", "0.333333", "0.05", "1.225", "0", "64", "1", "cyclical"]
    kappa = load_spec(ROOT / "experiments" / "kappa_yelp.toml")
    assert [kappa.setting(v) for v in kappa.values] == ["κ = 0", "κ = 1/64", "κ = 0.125", "κ = 1", "κ = 8"]


@pytest.mark.corpus
def test_export_writes_every_file_with_run_ids(exported):
    where, counts, tracker = exported
    assert set(counts) == set(FILES) | set(OPTIONAL) | {"sentences"}
    assert all(counts[name] > 0 for name in (*FILES, "sentences")) and counts["ksweep.csv"] == 3   # K = 1, 2, 4
    spec = load_spec(ROOT / "experiments" / "kl_floor.toml")
    assert counts["sentences"] == (len(spec.values) + 1) * 2 + 1   # every run on both splits, and the fp32 check
    results = load_results(where["results"])
    runs = results["runs"]
    assert len(runs) == len(spec.values) + 1 and set(runs.kind) == {"vae", "lm"} and set(runs.seed) == {0}
    known = set(runs.run_id)
    for name in ("history", "posterior_means", "samples", "units"):
        assert set(results[name].run_id) <= known
    assert "sentiment" in results["posterior_means"].columns
    assert set(runs["train.precision"]) == {"fp32"}   # as each run trained: smoke sets train.autocast = false
    stored = tracker.run(runs.run_id.iloc[0]).data.metrics["valid.iw_nll"]
    assert runs["valid.iw_nll"].iloc[0] == pytest.approx(stored, rel=1e-9)


def test_export_takes_only_the_sweeps_of_the_specs_it_is_given(exported, tmp_path):
    """`make results` passes --specs experiments/: a sweep of another folder's spec in the same store (the
    budget probes of experiments/probes/) stays out of the paper's results, and a spec whose sweep the store
    lacks is one clear error."""
    where, _, tracker = exported
    counts = export_results(tmp_path / "only", tracker=tracker, preset="smoke", experiments={"ablation-kl-floor"})
    assert counts["runs.csv"] == len(load_results(where["results"])["runs"])
    with pytest.raises(ResultsMissingError, match="of ablation-budget-vae: run a sweep first"):
        export_results(tmp_path / "none", tracker=tracker, preset="smoke", experiments={"ablation-budget-vae"})
    assert not (tmp_path / "none").exists()


def test_the_baseline_is_the_lm_row_with_no_setting_in_every_reader(tmp_path):
    """One rule, as collect_runs writes it, read back from a CSV (where "" becomes NaN): an LM with no setting.
    An LM grid's setting and an LM comparison row off the grid (value NaN, a name) are not the baseline."""
    import pandas as pd

    from gptvae.report import setting_label
    from gptvae.results import baseline_rows, is_baseline

    runs = pd.DataFrame({"kind": ["lm", "lm", "lm", "vae"], "setting": ["", "3000", "LM, no latent", ""],
                         "value": [float("nan"), 3000.0, float("nan"), float("nan")]})
    runs.to_csv(tmp_path / "runs.csv", index=False)
    for frame in (runs, pd.read_csv(tmp_path / "runs.csv")):
        assert baseline_rows(frame).tolist() == [True, False, False, False]
        assert [is_baseline(r.kind, r.setting) for r in frame.itertuples()] == [True, False, False, False]
        assert setting_label(None, next(frame.itertuples())) == "LM baseline"


def test_a_grid_of_lms_exports_every_setting_and_reads_none_as_the_baseline(tmp_path):
    """A spec whose own grid is of LMs (as the budget probe experiments/probes/budget_lm.toml, here at smoke
    size, on the synthetic task): each setting keeps its own row (none is taken for the baseline and merged away), its table
    compares them, and it has no LM baseline row."""
    from gptvae.report import comparison_table

    spec_path = tmp_path / "lms.toml"
    spec_path.write_text('name = "lms"\nfactor = "train.steps"\nvalues = [4, 6]\nsymbol = "steps"\n'
                         'baseline = false\n[base]\n"model.kind" = "lm"\n')
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    spec = load_spec(spec_path)
    run_sweep(spec, preset_name="smoke", dataset=None, seeds=[0], overrides=[*(o for o in FAST if not o.startswith(("train.steps", "data."))), "data.dataset=synthetic"],
              runs_root=tmp_path / "runs", tracker=tracker, progress=False)
    export_results(tmp_path / "results", tracker=tracker, preset="smoke", experiments={spec.experiment})
    runs = load_results(tmp_path / "results")["runs"]
    assert sorted(runs.value) == [4, 6] and set(runs.kind) == {"lm"} and runs.config_hash.nunique() == 2
    table = comparison_table(runs, spec, tmp_path / "results")
    row = next(line for line in table.splitlines() if line.startswith("| steps = 6 "))
    assert row.split(" | ")[4] != "–" and "LM baseline" not in table   # compared with steps = 4; no baseline
    from gptvae import plots

    results = load_results(tmp_path / "results")
    curves = plots.training_curves(results["history"], runs, spec.experiment, factor_label="steps")
    assert [ax.get_ylabel() for ax in curves.axes if ax.get_visible()] == ["NLL bound (nats/token)"]   # no KL, AU
    assert {line.get_label() for line in curves.axes[0].lines} == {"4", "6"}   # both settings, no LM baseline
    panels = plots.metrics_vs_factor(runs, spec.experiment, factor_label="steps", family="LM")
    labels = [ax.get_ylabel() for ax in panels.axes if ax.get_visible()]
    assert labels and not any("KL" in label or "active" in label for label in labels)


@pytest.mark.corpus
def test_tables_and_figures_are_deterministic(exported):
    where, _, _ = exported
    table, pngs = ablation_report("ablation-kl-floor", where=where)
    assert "| LM baseline | 1 |" in table and "| λ = 0 | 1 |" in table and len(pngs) == 6
    assert "kl-floor_differences.png" in {p.name for p in pngs}   # the paired comparisons, drawn
    assert {p.name for p in where["tables"].iterdir()} >= {"kl-floor_likelihood.md", "kl-floor_use.md",
                                                          "kl-floor_likelihood_test.md", "kl-floor_samples.md"}
    first = {p.name: p.read_bytes() for p in sorted(where["tables"].iterdir())}
    figures = {p.name: p.read_bytes() for p in sorted(where["figures"].iterdir())}
    ablation_report("ablation-kl-floor", where=where)
    assert {p.name: p.read_bytes() for p in sorted(where["tables"].iterdir())} == first
    assert {p.name: p.read_bytes() for p in sorted(where["figures"].iterdir())} == figures


@pytest.mark.corpus
def test_notebook_runs_headlessly_and_paper_cites_exported_runs(exported, tmp_path):
    where, _, _ = exported
    env = {**os.environ, "GPTVAE_RESULTS": str(where["results"]), "GPTVAE_FIGURES": str(where["figures"]),
           "GPTVAE_TABLES": str(where["tables"])}
    bin_dir = Path(sys.executable).parent
    source = tmp_path / "ablation.ipynb"
    subprocess.run([str(bin_dir / "jupytext"), "--quiet", "--to", "ipynb", "-o", str(source),
                    str(ROOT / "analysis" / "ablation.py")], check=True, timeout=60)
    done = subprocess.run([str(bin_dir / "papermill"), str(source), str(tmp_path / "kl-floor.ipynb"),
                           "-p", "ablation", "kl-floor"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (where["figures"] / "kl-floor_metrics.png").is_file()

    overview_report(where=where)
    md, html = render_paper(ROOT / "paper" / "paper.md", tmp_path / "build", where=where)
    text = md.read_text()
    assert "## How loose is the bound?" in text and "**bf16 against fp32.**" in text
    pdf = (tmp_path / "build" / "paper.pdf").read_bytes()
    render_paper(ROOT / "paper" / "paper.md", tmp_path / "again", where=where)
    assert pdf.startswith(b"%PDF") and (tmp_path / "again" / "paper.pdf").read_bytes() == pdf   # reproducible
    cited = {line.split("`")[1] for line in text.splitlines() if line.startswith("| ") and "`" in line}
    assert cited and cited <= set(load_results(where["results"])["runs"].run_id)
    assert "<table>" in html.read_text() and "{{" not in text


def test_a_run_stopped_on_a_rise_is_a_snapshot():
    """The old plateau rule passed a rise of any size for a plateau; such a run is not converged."""
    import pandas as pd

    from gptvae.results import no_rise_for_a_plateau

    runs = pd.DataFrame({"train.converged": [1.0, 1.0, 1.0, 0.0, float("nan")],
                         "train.plateau_improvement": [0.004, -0.005, -2.6, 0.3, float("nan")],
                         "train.tolerance": [0.01] * 5})
    out = no_rise_for_a_plateau(runs)
    assert out["train.converged"].tolist()[:4] == [1.0, 1.0, 0.0, 0.0]   # a fall within the tolerance is flat
    assert out["train.rising"].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert runs["train.converged"].tolist()[:3] == [1.0, 1.0, 1.0]        # the input is left alone


def test_missing_results_name_the_make_target(tmp_path):
    with pytest.raises(ResultsMissingError, match="make results"):
        load_results(tmp_path)


def test_pca_projection_is_deterministic_and_ordered():
    import numpy as np

    x = np.random.default_rng(0).normal(size=(200, 4)) * [3.0, 1.0, 0.5, 0.1]
    a, b = pca_2d(x), pca_2d(x.copy())
    assert np.array_equal(a, b) and a[:, 0].std() > a[:, 1].std() > 0
    assert pca_2d(x[:, :1])[:, 1].tolist() == [0.0] * 200   # one latent dimension: the second axis is empty


@pytest.mark.corpus
def test_an_ablation_not_run_yet_says_what_to_run(exported):
    where, _, _ = exported
    table, pngs = ablation_report("ablation-latent-dim", where=where)
    assert pngs == [] and "make ablation-latent-dim" in table


def test_appendix_lists_a_shared_run_under_each_ablation_with_its_own_setting(tmp_path):
    """beta = 1 (kl-weight) and lambda = 0 (kl-floor) are one run: each section names its own setting."""
    import pandas as pd

    from gptvae.report import PaperContext

    rows = [("ablation-kl-floor", 0.0, "shared", "ablation-kl-floor"), ("ablation-kl-floor", 0.5, "floor", "ablation-kl-floor"),
            ("ablation-kl-weight", 1.0, "shared", "ablation-kl-floor"), ("ablation-kl-weight", 0.5, "weight", "ablation-kl-weight")]
    runs = pd.DataFrame([{"experiment": e, "kind": "vae", "value": v, "setting": str(v), "seed": 0, "run_id": r,
                          "trained_in": t, "valid.kl": float(i)} for i, (e, v, r, t) in enumerate(rows)])
    where = {"results": tmp_path, "figures": tmp_path, "tables": tmp_path}
    runs.to_csv(tmp_path / "runs.csv", index=False)
    for name in FILES[1:]:
        pd.DataFrame({"run_id": []}).to_csv(tmp_path / name, index=False)
    ctx = PaperContext(where, tmp_path)
    assert ctx.value("ablation-kl-weight", "valid.kl", 1.0) == "2.00"
    ctx.value("ablation-kl-floor", "valid.kl", 0.5)
    sections = {s.split("\n", 1)[0]: s for s in ctx.appendix().split("### ")[1:]}
    assert sections["ablation-kl-weight"].count("`shared`") == 1
    assert "| β = 1 | 0 | `shared` | ablation-kl-floor |" in sections["ablation-kl-weight"]
    assert "`floor`" in sections["ablation-kl-floor"] and "shared" not in sections["ablation-kl-floor"]


@pytest.mark.corpus
def test_paper_renders_from_runs_never_evaluated_on_the_test_split(exported, tmp_path):
    """A study evaluated only on the validation split gets no test table, and the paper no test section."""
    import shutil

    import pandas as pd

    where, _, _ = exported
    ablation_report("kl-floor", where=where)
    render_paper(ROOT / "paper" / "paper.md", tmp_path / "with", where=where, pdf=False)
    results = tmp_path / "results"
    shutil.copytree(where["results"], results)
    for path in (results / "sentences").glob("*.test.csv"):
        path.unlink()
    runs = pd.read_csv(results / "runs.csv")
    runs.drop(columns=[c for c in runs if c.startswith("test.")]).to_csv(results / "runs.csv", index=False)
    without = {**where, "results": results, "tables": tmp_path / "tables", "figures": tmp_path / "figures"}
    ablation_report("kl-floor", where=without)
    assert not (without["tables"] / "kl-floor_likelihood_test.md").exists()
    md, _ = render_paper(ROOT / "paper" / "paper.md", tmp_path / "without", where=without, pdf=False)
    assert "### On the test split" not in md.read_text()
    assert "### On the test split" in (tmp_path / "with" / "paper.md").read_text()


@pytest.mark.corpus
def test_export_reads_logged_artifacts_not_checkpoints(exported, tmp_path):
    """With every run folder (checkpoints included) gone, the export is byte for byte the same."""
    import shutil

    where, _, tracker = exported
    runs_root = where["results"].parent / "runs"
    moved = tmp_path / "runs-elsewhere"
    shutil.move(str(runs_root), moved)
    try:
        export_results(tmp_path / "again", tracker=tracker, preset="smoke")
    finally:
        shutil.move(str(moved), runs_root)
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (where["results"] / name).read_bytes(), name


@pytest.mark.corpus
def test_a_specs_evaluations_pick_the_runs_it_names(exported, tmp_path):
    """kl_floor.toml asks for every run on test, K sweeps of seed 0 at every λ and the LM, and an fp32 check
    at λ = 0.1 with the run's own validation protocol; with whole_valid = true added, also every run on all
    validation sentences at its own K."""
    from gptvae.evaluation import spec_evaluations

    where, _, tracker = exported
    runs = load_results(where["results"])["runs"]
    shipped = (ROOT / "experiments" / "kl_floor.toml").read_text()
    (tmp_path / "kl_floor.toml").write_text(shipped.replace("[evaluations]\n", "[evaluations]\nwhole_valid = true\n"))
    spec = load_spec(tmp_path / "kl_floor.toml")
    assert spec_evaluations(spec, tracker, preset_name="cpu") == []   # the store's runs are smoke runs
    items = spec_evaluations(spec, tracker, preset_name="smoke", dataset=None, overrides=FAST)
    by_kind = {kind: {i["run_id"] for i in items if i["kind"] == kind}
               for kind in ("complete", "whole_valid", "test", "k_sweep", "fp32")}
    assert by_kind["complete"] == by_kind["whole_valid"] == set(runs.run_id)
    assert all((i["split"], i["iw_samples"], i["max_sequences"]) == ("valid", 4, None)
               for i in items if i["kind"] == "whole_valid")
    setting = {row.run_id: ("lm" if row.kind == "lm" else row.setting) for row in runs.itertuples()}
    assert by_kind["test"] == set(runs.run_id)
    assert sorted(setting[r] for r in by_kind["k_sweep"]) == ["0.0", "0.05", "0.1", "0.25", "1.0", "lm"]
    assert [setting[r] for r in by_kind["fp32"]] == ["0.1"]
    fp32 = next(i for i in items if i["kind"] == "fp32")
    assert (fp32["iw_samples"], fp32["max_sequences"], fp32["split"]) == (4, 40, "valid")
    assert all(i["iw_samples"] == 500 and i["max_sequences"] == 1000 for i in items if i["kind"] == "test")


@pytest.mark.corpus
def test_a_protocol_logged_before_a_column_existed_is_completed_and_nothing_else_moves(exported, tmp_path):
    """A run whose validation table predates rec_other (as the first pieces of the study do): evaluating
    its protocol again adds the column, keeps every logged column as it was, and logs no metric twice."""
    import pandas as pd

    from gptvae.evaluation import _logged_table

    _, _, tracker = exported
    run_id = tracker.trained_runs("ablation-kl-floor", kind="vae")[-1]
    original = _logged_table(tracker, run_id, "sentences_valid.csv")
    old = original.drop(columns="rec_other")
    old.to_csv(tmp_path / "sentences_valid.csv", index=False)
    tracker.log_artifact(run_id, tmp_path / "sentences_valid.csv")   # as an older evaluation logged it
    history = len(tracker.client.get_metric_history(run_id, "valid.iw_nll"))

    evaluate_logged_run(run_id, split="valid", iw_samples=4, max_sequences=40, tracker=tracker)
    completed = _logged_table(tracker, run_id, "sentences_valid.csv")
    assert list(completed.columns) == [*old.columns, "rec_other"]
    pd.testing.assert_frame_equal(completed[old.columns], old)
    assert completed.rec_other.to_numpy() == pytest.approx(original.rec_other.to_numpy(), rel=1e-6, nan_ok=True)
    assert len(tracker.client.get_metric_history(run_id, "valid.iw_nll")) == history
    evaluate_logged_run(run_id, split="valid", iw_samples=4, max_sequences=40, tracker=tracker)   # complete now
    assert len(tracker.client.get_metric_history(run_id, "valid.iw_nll")) == history


def test_a_free_transformer_sweep_with_a_gptvae_row_goes_from_the_store_to_its_tables(tmp_path):
    """A spec of another family on another corpus (the κ study's shape): its grid, its LM and its comparison
    row of a different family are trained, exported, and each is a row of the tables under its own name."""
    import pandas as pd

    folder = tmp_path
    (folder / "experiments").mkdir()
    spec_path = folder / "experiments" / "kappa.toml"
    spec_path.write_text('name = "kappa"\nfactor = "objective.free_bits"\nvalues = [0.0, 1.0]\nsymbol = "κ"\n'
                         'dataset = "synthetic"\n[base]\n"model.kind" = "freetransformer"\n"model.latent_bits" = 2\n'
                         '"objective.free_bits_mode" = "per_token"\n"objective.free_bits_unit" = "bits"\n'
                         '[[compare]]\nname = "GPTVAE, 67 bits in all"\n'
                         'set = { "model.kind" = "vae", "objective.free_bits_mode" = "total", "objective.free_bits" = 1.0 }\n')
    tracker = Tracker(f"sqlite:///{folder}/mlflow.db")
    spec = load_spec(spec_path)
    synthetic = ["data.synthetic_train=300", "data.synthetic_eval=32", "train.steps=4", "train.eval_every=2",
                 "train.log_every=2", "train.val_sequences=32", "eval.max_sequences=32", "eval.num_samples=2",
                 "eval.iw_samples=4", "eval.mi_sequences=32", "eval.probe_sequences=64"]
    rows = run_sweep(spec, preset_name="smoke", dataset=None, seeds=[0], overrides=synthetic,
                     runs_root=folder / "runs", tracker=tracker, progress=False)
    assert [r["kind"] for r in rows] == ["lm", "freetransformer", "freetransformer", "vae"]
    where = {"results": folder / "results", "figures": folder / "figures", "tables": folder / "tables",
             "experiments": folder / "experiments"}
    export_results(where["results"], tracker=tracker, preset="smoke")
    runs = load_results(where["results"])["runs"]
    assert sorted(runs.kind) == ["freetransformer", "freetransformer", "lm", "vae"]
    assert set(runs.dataset) == {"synthetic"}
    # the comparison row's floor is 1.0 like the grid's κ = 1: its family tells them apart
    assert pd.to_numeric(runs.setting, errors="coerce").eq(1.0).sum() == 2
    tables, pngs = ablation_report("kappa", where=where)
    likelihood = (where["tables"] / "kappa_likelihood.md").read_text()
    labels = [line.split(" | ")[0].lstrip("| ") for line in likelihood.splitlines()[2:] if line.startswith("| ")]
    assert labels == ["κ = 0", "κ = 1", "GPTVAE, 67 bits in all", "LM baseline"]
    use = (where["tables"] / "kappa_use.md").read_text()
    assert "GPTVAE, 67 bits in all" in use
    # a synthetic sequence is one word: no BLEU columns, and the task's own probes with their majority class
    header = use.splitlines()[0]
    assert "BLEU" not in header and "no BLEU columns: a synthetic sequence is one word" in use
    assert "position probe on z" in header and "letter probe on z" in header and "sentiment" not in use
    assert "majority class (nan" not in use
    assert "### GPTVAE, 67 bits in all" in (where["tables"] / "kappa_samples.md").read_text()
    assert pngs and all(p.is_file() for p in pngs)
    # the differences figure draws the comparison row beside the grid, under its name
    from gptvae.report import differences
    assert "GPTVAE, 67 bits in all" in set(differences(runs, spec, where["results"]).name)
    assert not (where["tables"] / "kappa_ksweep.md").exists()   # none of its runs was K-swept
    # nor when the LM row alone has a K sweep (the main study's LM, linked into yelp's κ sweep): flat in K, no study
    lm = runs[runs.kind == "lm"].run_id.iloc[0]
    pd.DataFrame([{"run_id": lm, "split": "valid", "eval_seed": 0, "n_sequences": 32, "n_tokens": 2144, "K": k,
                   "iw_nll": 30.0, "iw_nll_per_token": 0.45} for k in (1, 10)]).to_csv(where["results"] / "ksweep.csv",
                                                                                        index=False)
    _, pngs = ablation_report("kappa", where=where)
    assert not (where["tables"] / "kappa_ksweep.md").exists() and not any("ksweep" in p.name for p in pngs)

    # beside a study of GPTVAE on yelp (made up, as test_paper makes it): the setup and the verdicts read only
    # that study, and the κ section reads its own runs, with Fleuret's regimes as a table
    from test_paper import synthetic_study

    both = synthetic_study(folder / "both", floor_effect=3.0, use=2.0, only="kl_floor")
    shutil.copy(spec_path, both["experiments"] / "kappa.toml")
    export_results(both["results"], tracker=tracker, preset="smoke")
    for name in ("kl-floor", "kappa"):
        ablation_report(name, where=both)
    md, _ = render_paper(ROOT / "paper" / "paper.md", folder / "build", where=both, pdf=False)
    text = md.read_text()
    section = text.split("## The Free Transformer: free bits κ on the synthetic task", 1)[1].split("\n## ", 1)[0]
    assert "GPTVAE, 67 bits in all" in section and "- **κ = 1 bit" in section
    assert "Fleuret (2025) | measure | here" in section   # κ = 1 is one of the paper's regimes
    assert "the latent encodes the position and the noise" in section
    setup = text.split("## Setup", 1)[1].split("\n## ", 1)[0]
    assert "kappa" not in setup and "synthetic" not in setup
