"""gptvae: a reproducible research suite for GPTs with a continuous latent (x-transformers' GPTVAE).

    model.py      GPTVAE and the LM baseline: posterior / log_likelihood / generate
    objective.py  the ELBO-scale loss, free bits, latent dropout, beta schedules
    data.py       the corpora, vocabularies, length-bucketed batches, the synthetic task
    metrics.py    ELBO, IW-NLL, PPL, MI, active units, probes
    config.py     run configuration, presets, overrides
    train.py      the training loop and checkpoints
    tracking.py   MLflow
    sweep.py      ablation sweeps over experiments/*.toml
    evaluation.py re-evaluating and sampling logged runs
    cli.py        python -m gptvae ...
"""

__version__ = "0.1.0"
