"""gptvae: a reproducible research suite for GPTs with a latent (x-transformers' GPTVAE, ...).

    config.py      every config dataclass, presets, --set overrides, the config hash (no torch)
    families/      model families, one module each plus a registry entry: gptvae (GPTVAE), lm (baseline)
    latents.py     latent distributions: what prior and posterior(x) return
    objective.py   the ELBO-scale loss, free bits, latent dropout, beta schedules
    data.py        the corpora, vocabularies, length-bucketed batches, the synthetic task
    metrics.py     ELBO, IW-NLL, PPL, MI, active units, probes
    catalog.py     the metric catalogue: names, units, digits
    train.py       the training loop
    evaluation.py  final evaluation, decoded examples; re-evaluating and sampling logged runs
    run.py         one run's lifecycle in MLflow
    sweep.py       experiment specs, the planner, sweeps
    executors/     how a sweep's runs are carried out: serial, pool
    tracking.py    the MLflow store
    results.py     store -> CSV export;  report.py, plots.py: CSV -> tables, figures, paper
    files.py       atomic writes, checkpoints;  device.py: device and autocast;  errors.py: user errors
    cli.py         python -m gptvae ...;  bench.py: benchmarks that print ratios
"""

__version__ = "0.1.0"
