"""Training: AdamW with warm-up and cosine decay, bf16 autocast, atomic checkpoints, exact resume.

    result = train(cfg, run_dir=Path("runs/x"), logger=RunLogger(...))

Determinism: the model is initialised from `train.seed`, the batch order of epoch e is a function of
(seed, e) alone, and the checkpoint holds the RNG state; so a run killed at any point and resumed from
its last checkpoint ends with exactly the numbers of an uninterrupted run.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gptvae.config import Config, ConfigError, config_from_dict, config_hash
from gptvae.data import Corpus, Split, batch_plan, collate, load_corpus
from gptvae.metrics import active_units, evaluate
from gptvae.model import build_model, num_parameters
from gptvae.objective import beta_at, objective

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
VALIDATION_SEED = 1234   # every run validates on the same subset with the same noise


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unreadable. It is never deleted for you."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf. The last good checkpoint is kept."""


# devices and precision

def pick_device(name: str | None = None) -> torch.device:
    if name and name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_is_fast(device: torch.device) -> bool:
    """bf16 autocast pays on CUDA and on CPUs with AMX or AVX512-BF16 (about 2x per step here)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())


def autocast_context(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


# atomic files

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, write) -> None:
    """Write through a temporary file in the same folder, fsync, then rename: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data) -> None:
    atomic_write_bytes(path, lambda h: h.write(json.dumps(data, indent=2, sort_keys=True).encode()))


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write_bytes(path, lambda h: torch.save(state, h))


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume (train without --resume to start a new run)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing = {"step", "model", "optimizer", "scheduler", "rng", "config"} - set(state)
        if missing:
            raise ValueError(f"missing entries {sorted(missing)}")
        return state
    except Exception as err:
        reason = (str(err).strip().splitlines() or [""])[0][:160]   # torch's messages run to pages
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a gptvae checkpoint ({type(err).__name__}: {reason}). "
            "It was left untouched; move it away to start the run from scratch."
        ) from None


# data helpers

def subset(split: Split, n: int | None, *, seed: int) -> Split:
    """A fixed random subset of n sequences (all of them when n is None or too large)."""
    if n is None or n >= len(split):
        return split
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return Split([split.sequences[i] for i in index.tolist()], {k: v[index] for k, v in split.labels.items()})


def load_data(cfg: Config) -> Corpus:
    d = cfg.data
    return load_corpus(d.dataset, max_len=d.max_len, chunk_len=d.chunk_len,
                       synthetic_sizes=(d.synthetic_train, d.synthetic_eval, d.synthetic_eval))


# optimisation

def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms, biases)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.98))


def lr_factor(step: int, cfg: Config) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio."""
    t = cfg.train
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# validation during training

@torch.no_grad()
def validate(model, split: Split, cfg: Config, *, device, autocast: bool) -> dict[str, float]:
    """Rec, KL, -ELBO (per sequence), the bound per token and AU on the fixed validation subset."""
    was_training = model.training
    model.eval()
    rec = kl = 0.0
    tokens = 0
    mus = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(VALIDATION_SEED)
        for index in batch_plan(split.lengths, max_tokens=cfg.eval.batch_tokens, shuffle=False):
            x = collate(split, index).to(device)
            with autocast_context(device, autocast):
                terms = objective(model, x, cfg.objective, beta=1.0)
            rec += float(terms.rec)
            kl += float(terms.kl)
            tokens += terms.tokens
            if model.has_latent:
                mus.append(model.posterior(x)[0].float().cpu())
    model.train(was_training)
    n = len(split)
    out = {"val/rec": rec / n, "val/kl": kl / n, "val/neg_elbo": (rec + kl) / n,
           "val/nll_bound_per_token": (rec + kl) / tokens}
    if mus:
        out["val/au"] = float(active_units(torch.cat(mus)))
    return out


# the loop

@dataclass
class TrainResult:
    run_dir: Path
    final: dict[str, float]       # final evaluation, "valid.iw_nll" style keys
    seconds: float
    resumed_from: int | None


def _git_commit() -> str:
    """HEAD of the checkout the package runs from, with "+dirty" when it has uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def train(cfg: Config, *, run_dir: Path, logger=None, progress: bool = True, resume: bool = True,
          device: str | None = None, stop_after: int | None = None) -> TrainResult:
    """Train one model, checkpointing to run_dir, and evaluate it at the end.

    logger: an optional tracking.RunLogger; metrics go to it in batches, right before each checkpoint.
    stop_after: stop (as if killed) after this many steps; tests use it to exercise resume.
    """
    cfg.validate()
    run_dir = Path(run_dir)
    device = pick_device(device)
    use_autocast = cfg.train.autocast and bf16_is_fast(device)
    started = time.time()

    corpus = load_data(cfg)
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
    start_step, resumed_from = 0, None
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
    else:
        atomic_write_json(run_dir / "config.json", cfg.to_dict())

    if logger is not None and start_step == 0:
        logger.tracker.log_params(logger.run_id, {**cfg.flat(), "model.num_parameters": num_parameters(model),
                                                  "data.vocab_size": len(corpus.vocab)})
        logger.tracker.set_tags(logger.run_id, {"gptvae.git_commit": _git_commit(), "gptvae.device": device.type,
                                                "gptvae.autocast": use_autocast,
                                                "gptvae.checkpoint": str(ckpt_path.resolve())})

    def checkpoint(step: int) -> None:
        if logger is not None:
            logger.flush()   # store first: a re-logged step is skipped on resume, a lost one would not be
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        save_checkpoint(ckpt_path, {"step": step, "config": cfg.to_dict(), "model": model.state_dict(),
                                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                    "rng": rng, "vocab_size": len(corpus.vocab)})

    if cfg.train.compile:
        for module in (getattr(model, "net", model).decoder, getattr(getattr(model, "net", None), "encoder", None)):
            if module is not None:
                module.compile(dynamic=True)   # bucketed batches vary in shape

    @functools.lru_cache(maxsize=1)
    def plan_for(epoch: int) -> list[torch.Tensor]:
        return batch_plan(train_split.lengths, max_tokens=cfg.train.batch_tokens, shuffle=True,
                          seed=cfg.train.seed, epoch=epoch)

    batches_per_epoch = len(plan_for(0))   # the same every epoch: only the order within a length changes
    steps = cfg.train.steps
    window = {"loss": 0.0, "rec": 0.0, "kl": 0.0, "kl_floored": 0.0, "tokens": 0, "sequences": 0, "time": 0.0}

    model.train()
    bar = tqdm(total=steps, initial=start_step, disable=not progress, desc=run_dir.name, unit="step",
               dynamic_ncols=True, leave=False)
    for step in range(start_step, steps):
        if stop_after is not None and step >= stop_after:
            break
        tic = time.perf_counter()
        epoch, i = divmod(step, batches_per_epoch)
        x = collate(train_split, plan_for(epoch)[i]).to(device, non_blocking=True)

        beta = beta_at(cfg.objective, step, steps)
        with autocast_context(device, use_autocast):
            terms = objective(model, x, cfg.objective, beta=beta)
        loss = terms.loss
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            bar.close()
            raise NonFiniteLossError(
                f"loss became {loss_value} at step {step} (rec {float(terms.rec):.3g}, KL {float(terms.kl):.3g}); "
                f"the last good checkpoint {ckpt_path} is kept. Lower train.lr or raise train.warmup_steps."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        scheduler.step()

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
            if logger is not None:
                logger.log(val, done)
            checkpoint(done)
        bar.update(1)
    bar.close()

    if stop_after is not None and stop_after < steps:
        return TrainResult(run_dir, {}, time.time() - started, resumed_from)

    trained = time.time()
    final = final_evaluation(model, corpus, cfg, device=device, autocast=use_autocast, progress=progress)
    # wall time of this process: loading + training (a resumed run counts only its own part), then evaluation
    final["time.train_seconds"] = trained - started
    final["time.eval_seconds"] = time.time() - trained
    atomic_write_json(run_dir / RESULT, final)
    if logger is not None:
        params = {k: v for k, v in final.items() if k.split(".", 1)[-1] in ("iw_samples", "mi_samples", "n_sequences", "mc_samples")}
        logger.tracker.log_params(logger.run_id, params)
        logger.tracker.log_metrics(logger.run_id, [(k, v, steps) for k, v in final.items() if k not in params])
        write_samples(model, corpus, cfg, run_dir / "samples.txt", device=device)
        atomic_write_bytes(run_dir / "checkpoint_path.txt", lambda h: h.write(f"{ckpt_path.resolve()}\n".encode()))
        for name in ("samples.txt", "config.json", "checkpoint_path.txt"):
            logger.tracker.log_artifact(logger.run_id, run_dir / name)
    return TrainResult(run_dir, final, time.time() - started, resumed_from)


def final_evaluation(model, corpus: Corpus, cfg: Config, *, device, autocast: bool,
                     progress: bool = False) -> dict[str, float]:
    """REFERENCE 3 metrics on each configured split, as {"valid.iw_nll": ..., "valid.iw_samples": K, ...}."""
    out = {}
    probe = subset(corpus.splits["train"], 5_000, seed=VALIDATION_SEED) if model.has_latent else None
    for name in cfg.eval.splits:
        split = subset(corpus.splits[name], cfg.eval.max_sequences, seed=VALIDATION_SEED)
        result = evaluate(model, split, iw_samples=cfg.eval.iw_samples, mc_samples=cfg.eval.mc_samples,
                          max_tokens=cfg.eval.batch_tokens, seed=cfg.train.seed,
                          probe_split=probe if probe is not None and split.labels else None, autocast=autocast,
                          progress=progress)
        out.update({f"{name}.{k}": v for k, v in result.items()})   # counts stay ints
    return out


@torch.no_grad()
def decode_samples(model, corpus: Corpus, cfg: Config, *, device) -> list[tuple[str, str]]:
    """(section, text) pairs: prior samples, reconstructions, an interpolation, LM-path samples.

    Seeded by train.seed, so a checkpoint always decodes to the same texts.
    """
    from gptvae.data import BOS

    n, vocab = cfg.eval.num_samples, corpus.vocab
    torch.manual_seed(cfg.train.seed)
    prompts = torch.full((n, 1), BOS, dtype=torch.long, device=device)
    budget = cfg.model.max_seq_len - 1
    out = []
    if model.has_latent:
        out += [("prior", vocab.decode(s)) for s in model.generate(prompts, max_new_tokens=budget, prior=True)]
        ref = subset(corpus.splits["valid"], n, seed=VALIDATION_SEED)
        x = collate(ref, torch.arange(len(ref))).to(device)
        recon = model.generate(prompts[: len(ref)], max_new_tokens=budget, reference=x)
        out += [("reconstruction", f"{vocab.decode(a)}  =>  {vocab.decode(b)}") for a, b in zip(x, recon)]
        mu, _ = model.posterior(x[:2])
        for t in torch.linspace(0, 1, 5).tolist():   # greedy decoding along the line between two posterior means
            z = (1 - t) * mu[0] + t * mu[1]
            text = vocab.decode(model.generate(prompts[:1], max_new_tokens=budget, z=z, temperature=0.0)[0])
            out.append(("interpolation", f"t={t:.2f}  {text}"))
    out += [("no latent", vocab.decode(s)) for s in model.generate(prompts, max_new_tokens=budget)]
    return out


def write_samples(model, corpus: Corpus, cfg: Config, path: Path, *, device) -> None:
    """The decoded samples as a text file, one section after another: the artifact people read."""
    lines, section = [], None
    for name, text in decode_samples(model, corpus, cfg, device=device):
        if name != section:
            lines += ([""] if section else []) + [f"# {name}"]
            section = name
        lines.append(text)
    atomic_write_bytes(path, lambda h: h.write(("\n".join(lines) + "\n").encode()))
