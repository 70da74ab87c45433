"""Command line: python -m gptvae {data,train,sweep,evaluate,sample,results,paper,bench} ...  (each has --help)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from gptvae.config import DATASETS, PRESETS, ConfigError, apply_overrides, preset
from gptvae.errors import GptvaeError
from gptvae.executors import EXECUTORS
from gptvae.files import write_error

EPILOG = """The tracking store is MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current folder.
Corpora are read from $GPTVAE_DATA_DIR/<name>/, else the user cache, else downloaded (sha256-checked)."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line like every other error here."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r} is malformed: expected integers like '0 1 2' or '0,1,2'") from None
    if not seeds:
        raise ConfigError("--seeds is empty: give at least one seed, e.g. --seeds 0")
    bad = [s for s in seeds if s < 0]
    if bad or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r} is invalid; allowed: distinct integers >= 0")
    return seeds


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu", help=f"size of model and run: {', '.join(PRESETS)} (default: cpu)")
    p.add_argument("--dataset", default=None, help=f"one of {', '.join(DATASETS)} (default: the preset's, yelp)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.dim_latent=16 --set objective.free_bits=0.5")


def cmd_data(args) -> None:
    from gptvae.data import describe

    print(describe(args.name, data_dir=args.data_dir))


def cmd_train(args) -> None:
    from gptvae.data import check_available
    from gptvae.run import PlannedRun, RunTask, execute
    from gptvae.tracking import Tracker

    cfg = apply_overrides(preset(args.preset, dataset=args.dataset), args.overrides)
    cfg = apply_overrides(cfg, {"train.seed": args.seed}).validate()
    check_available(cfg.data)
    run = PlannedRun(args.name or f"{cfg.model.kind} seed={cfg.train.seed}", cfg.model.kind, None, cfg)
    tracker = Tracker()
    row = execute(RunTask(run=run, experiment=args.experiment, parent_id=None, runs_root=args.runs_root,
                          tracking_uri=tracker.uri, progress=not args.quiet), tracker=tracker)
    print(json.dumps(row, indent=2, default=str))


def cmd_sweep(args) -> None:
    from gptvae.sweep import exported_runs, format_plan, format_rows, load_spec, plan_runs, plan_status, run_sweep
    from gptvae.tracking import Tracker, store_exists, tracking_uri

    spec = load_spec(args.spec)
    seeds = parse_seeds(args.seeds)
    if args.plan:
        runs = plan_runs(spec, preset_name=args.preset, dataset=args.dataset, seeds=seeds, overrides=args.overrides)
        tracker = Tracker() if store_exists(tracking_uri()) else None   # a store not yet made holds nothing
        rows = plan_status(runs, experiment=spec.experiment, runs_root=args.runs_root, tracker=tracker,
                           exported=exported_runs(args.results, spec.experiment),
                           elsewhere=exported_runs(args.results))
        print(f"{spec.experiment} ({args.preset}, {runs[0].cfg.data.dataset}): {len(rows)} planned runs, "
              f"{sum(r['status'] in ('to train', 'to resume') for r in rows)} to train\n")
        print(format_plan(rows))
        return
    rows = run_sweep(spec, preset_name=args.preset, dataset=args.dataset, seeds=seeds, jobs=args.jobs,
                     executor=args.executor, overrides=args.overrides, runs_root=args.runs_root,
                     progress=not args.quiet, results=args.results)
    print(f"\n{spec.experiment}: {len(rows)} runs\n")
    print(format_rows(rows))


def _matches(params: dict[str, str], where: dict) -> bool:
    """Whether a run's logged config holds every KEY=VALUE of --where (numbers compared as numbers)."""
    from gptvae.evaluation import same_setting

    return all(key in params and same_setting(params[key], value) for key, value in where.items())


def cmd_evaluate(args) -> None:
    from gptvae.errors import ConfigError
    from gptvae.evaluation import check_protocol, evaluate_logged_run, k_sweep_logged_run
    from gptvae.tracking import Tracker

    check_protocol(iw_samples=args.iw_samples, max_sequences=args.max_sequences, seed=args.seed)   # before any store
    ks = None
    if args.k_sweep:
        try:
            ks = [int(k) for k in args.k_sweep.split(",") if k.strip()]
        except ValueError:
            raise ConfigError(f"--k-sweep={args.k_sweep!r}: give importance-sample counts K >= 1 separated by "
                              "commas, e.g. 1,10,100,1000") from None
    where = {}
    known = preset("smoke").flat()
    for item in args.where:
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or key not in known:
            raise ConfigError(f"--where {item!r} is invalid; allowed: KEY=VALUE with KEY a config key such as "
                              "objective.free_bits, model.kind or train.seed")
        where[key] = value
    if where and not args.experiment:
        raise ConfigError(f"--where {' '.join(args.where)!r} filters --experiment's runs: give --experiment NAME too")
    if args.jobs < 1 or (args.jobs > 1 and not args.specs):
        raise ConfigError(f"--jobs {args.jobs}: allowed: an integer >= 1, and more than 1 only with --specs")
    tracker = Tracker()
    if args.specs:   # what the specs' [evaluations] ask of the runs in this store
        from gptvae.evaluation import run_evaluation, spec_evaluations
        from gptvae.sweep import load_spec, load_specs

        path = Path(args.specs)
        todo = []
        for spec in load_specs(path) if path.is_dir() else [load_spec(path)]:
            items = spec_evaluations(spec, tracker, preset_name=args.preset, dataset=args.dataset,
                                     overrides=args.overrides)
            print(f"{spec.experiment}: {len(items)} evaluation(s)" + ("" if items else " (no runs in this store)"))
            todo += items
        todo = list({json.dumps(item, sort_keys=True, default=list): item for item in todo}.values())  # a shared run once
        if args.jobs <= 1:
            for item in todo:
                print(f"  {item['kind']} {item['run_id']} on {item['split']}")
                run_evaluation(item, tracker)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # the long protocols first, so that the pool does not end on one of them alone
        todo.sort(key=lambda item: item["kind"] not in ("test", "k_sweep"))
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_evaluate_item, item): item for item in todo}
            for future in as_completed(futures):
                item = futures[future]
                future.result()   # a failed evaluation fails the command, after the others finished
                print(f"  {item['kind']} {item['run_id']} on {item['split']}: done", flush=True)
        return
    run_ids = list(args.run_id)
    if args.experiment:
        found = tracker.trained_runs(args.experiment, kind=args.kind)
        run_ids += [run_id for run_id in found if _matches(tracker.params(run_id), where)]
    if not run_ids:
        raise ConfigError("give run ids or --experiment NAME (its finished runs"
                          + (f" of kind {args.kind}" if args.kind else "") + " are evaluated)")
    for run_id in dict.fromkeys(run_ids):   # a run two sweeps share, once
        if ks:
            curve = k_sweep_logged_run(run_id, split=args.split, ks=ks, max_sequences=args.max_sequences,
                                       tracker=tracker)
            print(f"{run_id}: K sweep on {args.split}\n{curve.to_string(index=False)}")
            continue
        result = evaluate_logged_run(run_id, split=args.split, iw_samples=args.iw_samples,
                                     max_sequences=args.max_sequences, seed=args.seed, fp32=args.fp32,
                                     tracker=tracker)
        print(json.dumps({"run_id": run_id, **result}, indent=2))


def _evaluate_item(item: dict) -> None:
    """One row of spec_evaluations in a worker process of `evaluate --specs --jobs`: its own store
    connection, and its share of the cores."""
    from gptvae.cores import core_share
    from gptvae.evaluation import run_evaluation
    from gptvae.tracking import Tracker

    with core_share():   # the usable cores over the evaluations running now
        run_evaluation(item, Tracker())


def cmd_sample(args) -> None:
    from gptvae.evaluation import sample_from_run

    for line in sample_from_run(args.run, n=args.n, reference=args.reference, prior=not args.no_latent,
                                temperature=args.temperature, seed=args.seed):
        print(line)


def cmd_results(args) -> None:
    from gptvae.results import export_results

    experiments = None
    if args.specs:   # only these specs' sweeps: a study's folder, not every ablation the store holds
        from gptvae.sweep import load_spec, load_specs

        path = Path(args.specs)
        specs = load_specs(path) if path.is_dir() else [load_spec(path)]
        if not specs:
            raise ConfigError(f"--specs {path} holds no experiment spec (*.toml); allowed: a folder of specs "
                              "or one spec, e.g. experiments")
        experiments = {spec.experiment for spec in specs}
    counts = export_results(args.out, preset=args.preset, dataset=args.dataset, experiments=experiments)
    for name, rows in counts.items():
        print(f"{Path(args.out) / name}: {rows} rows")


def cmd_paper(args) -> None:
    from gptvae.report import paths, render_paper

    root = Path(__file__).resolve().parents[1] / "paper"
    md, html = render_paper(root / "paper.md", root / "build" / args.preset, where=paths(args.preset))
    print(f"wrote {md}, {html} and {html.with_suffix('.pdf')}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m gptvae", description=__doc__, epilog=EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("data", help="describe a dataset: splits, vocabulary size, token counts")
    p.add_argument("name", help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--data-dir", default=None, help="folder holding <name>/ (default: $GPTVAE_DATA_DIR)")
    p.set_defaults(fn=cmd_data)

    p = sub.add_parser("train", help="train one model, log it to MLflow, resume it if it was interrupted",
                       epilog=EPILOG)
    add_config_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--experiment", default="train", help="MLflow experiment name (default: train)")
    p.add_argument("--name", default=None, help="MLflow run name")
    p.add_argument("--runs-root", default="runs", help="where checkpoints go (default: runs/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("sweep", help="train every setting of an experiment spec (experiments/*.toml)",
                       description="Train every setting and seed of an experiment spec, each as an MLflow child "
                                   "run under one parent. Finished runs are skipped, interrupted ones resume, and "
                                   "a setting another sweep already trained is linked, not retrained.",
                       epilog=EPILOG)
    p.add_argument("spec", help="an experiment spec, e.g. experiments/kl_floor.toml")
    add_config_args(p)
    p.add_argument("--seeds", default="0", help="seeds, e.g. '0 1 2' (default: 0)")
    p.add_argument("--plan", action="store_true",
                   help="print every planned run (name, seed, config hash) and whether it is finished, a link "
                        "or still to train; train nothing")
    p.add_argument("--executor", default=None, choices=sorted(EXECUTORS),
                   help="how runs are carried out (default: serial for --jobs 1, pool for more; ray: a Ray task "
                        "per run on the cluster at RAY_ADDRESS, or on a local Ray when it is unset)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, each with cores/jobs threads; with "
                   "--executor ray, the CPUs each run reserves (the cluster decides how many run at once)")
    p.add_argument("--runs-root", default="runs", help="where checkpoints go (default: runs/)")
    p.add_argument("--results", default=None,
                   help="an export folder (make passes paper/results/<preset>): runs already exported there are "
                        "not trained again, so a study trained in pieces on different machines adds up")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("evaluate", help="re-evaluate logged runs from their checkpoints; log into the same runs",
                       description="Evaluate logged runs again from their checkpoints (the local one where the run "
                                   "was trained here, else the weights it logged to the store), on another split, with another K, in fp32, or as a K "
                                   "sweep; the numbers and per-sentence tables are logged into the same runs, "
                                   "never twice. `make results` exports them.",
                       epilog="e.g. python -m gptvae evaluate --experiment ablation-kl-floor --split test "
                              "--iw-samples 500 --max-sequences 1000")
    p.add_argument("run_id", nargs="*", help="MLflow run ids")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                   help="with --specs: the preset whose runs are evaluated (default: cpu)")
    p.add_argument("--dataset", default=None, choices=DATASETS,
                   help="with --specs: the dataset whose runs are evaluated (default: the preset's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with --specs: the overrides the sweeps were run with (as make's SET), so their runs are found")
    p.add_argument("--specs", default=None, metavar="PATH",
                   help="instead of runs: what the [evaluations] of these specs (a folder or one .toml) ask of the "
                        "runs in this store: all of valid at the run's K, the test split at K = 500, K sweeps, "
                        "fp32 checks (`make evaluations`)")
    p.add_argument("--experiment", default=None, help="also every finished run of this experiment, e.g. ablation-kl-floor")
    p.add_argument("--kind", default=None, help="with --experiment: only runs of this model family (vae, lm)")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="with --experiment: only runs whose logged config has KEY=VALUE (repeatable; numbers "
                        "compare as numbers), e.g. --where objective.free_bits=1 --where train.seed=0")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--iw-samples", type=int, default=500, help="K for IW-NLL (default: 500)")
    p.add_argument("--max-sequences", type=int, default=None,
                   help="evaluate a fixed seeded subset of N sequences (default: all)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: the run's own)")
    p.add_argument("--fp32", action="store_true", help="without bf16 autocast: the check of the bf16 numbers")
    p.add_argument("--jobs", type=int, default=1,
                   help="with --specs: evaluations carried out at once, each in its own process with its share of "
                        "the cores (default: 1)")
    p.add_argument("--k-sweep", default=None, metavar="K,K,...",
                   help="IW-NLL at each K from one set of max(K) samples, e.g. 1,10,100,1000 (logged as "
                        "ksweep_<split>.csv)")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("sample", help="decode samples from a trained run (prior, or a reference's latent)")
    p.add_argument("run", help="MLflow run id or run folder")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--reference", default=None, help="a sentence: decode from its posterior mean")
    p.add_argument("--no-latent", action="store_true", help="decode without a latent (LM path)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("results", help="export finished sweeps from MLflow into small CSV files for the paper")
    p.add_argument("--out", required=True, help="folder for runs.csv, history.csv, posterior_means.csv, samples.csv")
    p.add_argument("--preset", default=None, help="only sweeps run at this preset (default: all)")
    p.add_argument("--dataset", default=None, help="only sweeps on this dataset (default: all)")
    p.add_argument("--specs", default=None, metavar="PATH",
                   help="only the sweeps of these specs (a folder or one .toml; make passes experiments/): the "
                        "budget probes of experiments/probes/ stay out of the paper's results (default: every "
                        "ablation in the store)")
    p.set_defaults(fn=cmd_results)

    p = sub.add_parser("paper", help="render paper/paper.md with the generated tables and numbers to Markdown, "
                                     "HTML and PDF in paper/build/<preset>/")
    p.add_argument("--preset", default="cpu", help="whose results, tables and figures (default: cpu)")
    p.set_defaults(fn=cmd_paper)

    sub.add_parser("bench", help="benchmarks that print speed ratios (python -m gptvae bench --help)",
                   add_help=False)
    return parser


def _terminate(signum, frame):
    raise KeyboardInterrupt   # `kill PID` stops a sweep as Ctrl-C does: its runs are marked KILLED


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:   # the benchmark owns its flags
        from gptvae.bench import main as bench_main

        run = lambda: bench_main(argv[1:])   # noqa: E731
    else:
        args = build_parser().parse_args(argv)
        run = lambda: args.fn(args)   # noqa: E731
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        run()
    except GptvaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: runs in progress were marked KILLED; run the same command again to resume them",
              file=sys.stderr)
        return 130
    except OSError as err:
        failure = write_error(Path(err.filename or "?"), err)
        if failure is err:
            raise
        print(f"error: {failure}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
