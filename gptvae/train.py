"""Training: AdamW with warm-up and cosine decay, bf16 autocast, atomic checkpoints, exact resume.

    trained = train(cfg, run_dir=Path("runs/x"))     # -> Trained(model, corpus, step, ...)

Determinism: the model is initialised from `train.seed`, the batch order of epoch e is a function of
(seed, e) alone, and the checkpoint holds the RNG state; so a run killed at any point and resumed from
its last checkpoint ends with exactly the numbers of an uninterrupted run.

This module is the loop and nothing else. What a run logs, evaluates and keeps is `gptvae.run`'s.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from gptvae.config import Config, ConfigError, config_from_dict, config_hash
from gptvae.data import VALIDATION_SEED, Corpus, Split, batch_plan, collate, load_data, subset
from gptvae.errors import NonFiniteLossError
from gptvae.device import autocast_context, bf16_is_fast, pick_device
from gptvae.families import build_model
from gptvae.files import CHECKPOINT, CheckpointError, atomic_write_json, load_checkpoint, save_checkpoint
from gptvae.metrics import active_units
from gptvae.objective import beta_at, beta_settled, objective

class Logger(Protocol):
    """Where the loop reports. `gptvae.run.RunLogger` writes to MLflow; tests may pass None."""

    def start(self, *, model, corpus: Corpus, device: torch.device, autocast: bool) -> None: ...
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def flush(self) -> None: ...


# optimisation

def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms, biases). Fused (one kernel for all
    parameters) on CPU and CUDA, where torch has it."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.98), fused=fused)


def lr_factor(step: int, cfg: Config) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio."""
    t = cfg.train
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_step(model, optimizer, scheduler, x: torch.Tensor, cfg: Config, *, beta: float, device: torch.device,
               autocast: bool) -> tuple:
    """One optimiser step on batch x: (the objective's Terms, the loss as a float).

    A non-finite loss takes no step: the caller stops with the parameters of the step before.
    """
    with autocast_context(device, autocast):
        terms = objective(model, x, cfg.objective, beta=beta)
    loss_value = float(terms.loss.detach())
    if not math.isfinite(loss_value):
        return terms, loss_value
    optimizer.zero_grad(set_to_none=True)
    terms.loss.backward()
    if cfg.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    optimizer.step()
    scheduler.step()
    return terms, loss_value


# validation during training

@torch.no_grad()
def validate(model, split: Split, cfg: Config, *, device, autocast: bool) -> dict[str, float]:
    """Rec, KL, -ELBO (per sequence), the bound per token, AU, and what the plateau test reads: the
    objective the run's KL weight defines, (Rec + beta KL) / tokens without its floor, or with it
    (train.plateau_floored: as the gradient sees it), on the fixed validation subset. At beta = 1 that is the bound itself; at beta < 1 the bound can stall while the
    run still trades distortion for rate, so a plateau of the bound is not the end of training."""
    was_training = model.training
    model.eval()
    rec = kl = kl_floored = 0.0
    tokens = 0
    means = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(VALIDATION_SEED)
        for index in batch_plan(split.lengths, max_tokens=cfg.eval.batch_tokens, shuffle=False):
            x = collate(split, index).to(device)
            with autocast_context(device, autocast):
                terms = objective(model, x, cfg.objective, beta=1.0)
            rec += float(terms.rec)
            kl += float(terms.kl)
            kl_floored += float(terms.kl_floored)
            tokens += terms.tokens
            means.append(model.posterior(x).to("cpu", torch.float32))   # fp32, outside autocast: AU is a threshold
    model.train(was_training)
    n = len(split)
    out = {"val/rec": rec / n, "val/kl": kl / n, "val/neg_elbo": (rec + kl) / n,
           "val/nll_bound_per_token": (rec + kl) / tokens,
           "val/objective_per_token": (rec + cfg.objective.beta * kl) / tokens,
           "val/trained_objective_per_token": (rec + cfg.objective.beta * kl_floored) / tokens}
    mean = type(means[0]).cat(means).mean   # rows of different lengths line up (a per-token latent)
    if mean.shape[-1] > 0:   # active units need a latent
        out["val/au"] = float(active_units(mean))
    return out


# convergence

def plateau(bounds: list[float], *, patience: int, tolerance: float, test: str = "best") -> tuple[bool | None, float]:
    """(on a plateau, improvement) of a run whose validation objective (`validate`: the bound at beta = 1)
    was `bounds` at its validation points. Improvement is in nats per token (positive: still learning), and
    the run is on a plateau when it is below `tolerance`.

    best   the best value before the last `patience` points minus the best among them, judged from
           patience + 1 points. One low point before the window (validation noise) can stop a run whose
           curve still falls: 3.635, 3.629, 3.648, 3.629 after 3.684, 3.663 reads 0.006.
    mean   the mean of the `patience` points before the last `patience` minus the mean of those, judged from
           2 x patience points: the same curve reads 0.025, still learning.

    With patience 0, or too few points, nothing is judged: (None, nan).
    """
    if patience < 1 or len(bounds) < (2 * patience if test == "mean" else patience + 1):
        return None, math.nan
    if test == "mean":
        improvement = sum(bounds[-2 * patience:-patience]) / patience - sum(bounds[-patience:]) / patience
    else:
        improvement = min(bounds[:-patience]) - min(bounds[-patience:])
    return improvement < tolerance, improvement


# the loop

@dataclass
class Trained:
    model: torch.nn.Module
    corpus: Corpus
    device: torch.device
    autocast: bool
    step: int                   # optimiser steps the model has taken
    total_steps: int            # cfg.train.steps
    resumed_from: int | None    # the checkpoint step this process started from
    train_seconds: float        # wall time of training and validation, all pieces of the run together
    bounds: list[float]         # the validation bound (nats/token) at each validation point since beta settled
    stopped: bool = False       # stopped early, on a plateau (train.patience)

    @property
    def finished(self) -> bool:
        return self.stopped or self.step >= self.total_steps

    def convergence(self, cfg: Config) -> dict[str, float]:
        """What a run records about its plateau: converged (1/0, absent when patience is 0), the
        improvement over its last `patience` validation points, and where it stopped."""
        on_plateau, improvement = plateau(self.bounds, patience=cfg.train.patience, tolerance=cfg.train.tolerance,
                                          test=cfg.train.plateau_test)
        out = {"train.steps_trained": float(self.step), "train.stopped_early": float(self.stopped),
               "train.best_bound": min(self.bounds) if self.bounds else math.nan}
        if on_plateau is not None:
            out.update({"train.converged": float(on_plateau), "train.plateau_improvement": improvement})
        return {k: v for k, v in out.items() if not math.isnan(v)}


def train(cfg: Config, *, run_dir: Path, logger: Logger | None = None, progress: bool = True,
          resume: bool = True, device: str | None = None, stop_after: int | None = None) -> Trained:
    """Train one model to cfg.train.steps, or to a plateau of its validation objective (train.patience; `validate`),
    checkpointing to run_dir (resuming from it when it exists).

    logger: metrics go to it in batches, flushed right before each checkpoint.
    stop_after: stop (as if killed) after this many steps; tests use it to exercise resume.
    """
    cfg.validate()
    run_dir = Path(run_dir)
    device = pick_device(device)
    use_autocast = cfg.train.autocast and bf16_is_fast(device)
    started = time.time()

    corpus = load_data(cfg.data)
    train_split, valid_split = corpus.splits["train"], corpus.splits["valid"]
    longest = int(max(s.lengths.max() for s in corpus.splits.values()))
    if longest > cfg.model.max_seq_len:
        raise ConfigError(f"model.max_seq_len={cfg.model.max_seq_len} is shorter than the longest {cfg.data.dataset} "
                          f"sequence ({longest} tokens); raise it or set data.max_len")
    val_subset = subset(valid_split, cfg.train.val_sequences, seed=VALIDATION_SEED)

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, num_tokens=len(corpus.vocab)).to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))

    ckpt_path = run_dir / CHECKPOINT
    start_step, resumed_from, seconds_before = 0, None, 0.0
    bounds: list[float] = []   # the validation objective at each validation point: what the plateau is judged on
    stopped = False
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        if config_hash(config_from_dict(state["config"])) != config_hash(cfg):
            raise CheckpointError(f"checkpoint {ckpt_path} belongs to another config; use another run folder")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        start_step = resumed_from = int(state["step"])
        seconds_before = float(state.get("train_seconds", 0.0))
        bounds = [float(b) for b in state.get("bounds", [])]
        stopped = bool(state.get("stopped", False))
        if state.get("threads") and device.type == "cpu":
            # the reductions' order depends on the thread count: resume with the run's own, for exact numbers
            from gptvae.cores import usable_cores

            torch.set_num_threads(min(int(state["threads"]), usable_cores()))
    else:
        atomic_write_json(run_dir / "config.json", cfg.to_dict())

    if logger is not None and start_step == 0:
        logger.start(model=model, corpus=corpus, device=device, autocast=use_autocast)
    elif logger is not None:   # a resume, perhaps on a machine of the other precision
        logger.precision(use_autocast)

    def elapsed() -> float:
        return seconds_before + time.time() - started

    last_checkpoint = start_step

    def checkpoint(step: int) -> None:
        nonlocal last_checkpoint
        if logger is not None:
            logger.flush()   # store first: a re-logged step is skipped on resume, a lost one would not be
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        save_checkpoint(ckpt_path, {"step": step, "config": cfg.to_dict(), "model": model.state_dict(),
                                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                    "rng": rng, "vocab_size": len(corpus.vocab), "train_seconds": elapsed(),
                                    "threads": torch.get_num_threads(), "bounds": bounds, "stopped": stopped})
        last_checkpoint = step

    if cfg.train.compile:
        from x_transformers import TransformerWrapper

        for module in model.modules():   # the x-transformers stacks the families call
            if isinstance(module, TransformerWrapper):
                module.compile(dynamic=True)   # bucketed batches vary in shape

    @functools.lru_cache(maxsize=1)
    def plan_for(epoch: int) -> list[torch.Tensor]:
        return batch_plan(train_split.lengths, max_tokens=cfg.train.batch_tokens, shuffle=True,
                          seed=cfg.train.seed, epoch=epoch)

    settled = beta_settled(cfg.objective, cfg.train.steps)
    batches_per_epoch = len(plan_for(0))   # the same every epoch: only the order within a length changes
    steps = cfg.train.steps
    window = {"loss": 0.0, "rec": 0.0, "kl": 0.0, "kl_floored": 0.0, "tokens": 0, "sequences": 0, "time": 0.0}

    model.train()
    bar = tqdm(total=steps, initial=start_step, disable=not progress, desc=run_dir.name, unit="step",
               dynamic_ncols=True, leave=False)
    step = start_step
    for step in range(start_step, steps if not stopped else start_step):
        if stop_after is not None and step >= stop_after:
            break
        tic = time.perf_counter()
        epoch, i = divmod(step, batches_per_epoch)
        x = collate(train_split, plan_for(epoch)[i]).to(device, non_blocking=True)

        beta = beta_at(cfg.objective, step, steps)
        terms, loss_value = train_step(model, optimizer, scheduler, x, cfg, beta=beta, device=device,
                                       autocast=use_autocast)
        if not math.isfinite(loss_value):
            bar.close()
            kept = (f"the last good checkpoint {ckpt_path} (step {last_checkpoint}) is kept" if last_checkpoint else
                    f"no checkpoint had been written yet (the first comes at step {cfg.train.eval_every})")
            raise NonFiniteLossError(
                f"loss became {loss_value} at step {step} (rec {float(terms.rec):.3g}, KL {float(terms.kl):.3g}); "
                f"{kept}. Lower train.lr or raise train.warmup_steps."
            )

        window["loss"] += loss_value * terms.tokens
        for key in ("rec", "kl", "kl_floored"):
            window[key] += float(getattr(terms, key))
        window["tokens"] += terms.tokens
        window["sequences"] += terms.sequences
        window["time"] += time.perf_counter() - tic

        done = step + 1
        if done % cfg.train.log_every == 0 or done == steps:
            n, tok = window["sequences"], window["tokens"]
            point = {"train/loss": window["loss"] / tok, "train/rec": window["rec"] / n, "train/kl": window["kl"] / n,
                     "train/kl_floored": window["kl_floored"] / n, "train/rec_per_token": window["rec"] / tok,
                     "train/beta": beta, "train/lr": scheduler.get_last_lr()[0],
                     "train/tokens_per_s": tok / max(window["time"], 1e-9)}
            if logger is not None:
                logger.log(point, done)
            bar.set_postfix(loss=f"{point['train/loss']:.3f}", kl=f"{point['train/kl']:.2f}",
                            tok_s=f"{point['train/tokens_per_s']:.0f}")
            window = dict.fromkeys(window, 0.0)
            window["tokens"] = window["sequences"] = 0
        if done % cfg.train.eval_every == 0 or done == steps:
            val = validate(model, val_subset, cfg, device=device, autocast=use_autocast)
            if done >= settled:   # judged only once beta has its final value
                bounds.append(val["val/trained_objective_per_token" if cfg.train.plateau_floored
                                  else "val/objective_per_token"])
            on_plateau, improvement = plateau(bounds, patience=cfg.train.patience, tolerance=cfg.train.tolerance,
                                              test=cfg.train.plateau_test)
            if on_plateau is not None:
                val["val/plateau_improvement"] = improvement
            stopped = bool(on_plateau) and cfg.train.stop_on_plateau and done < steps
            if logger is not None:
                logger.log(val, done)
            checkpoint(done)
        step = done
        bar.update(1)
        if stopped:
            break
    bar.close()

    return Trained(model=model, corpus=corpus, device=device, autocast=use_autocast, step=step, total_steps=steps,
                   resumed_from=resumed_from, train_seconds=elapsed(), bounds=bounds, stopped=stopped)
