"""One run's lifecycle: its MLflow child run, training, the final evaluation, and what it leaves behind.

    row = execute(RunTask(run=PlannedRun(...), experiment="ablation-kl-floor", parent_id=..., ...))

In order, and safe to repeat from any point (a killed run resumes by running `execute` again):

1. find or create the child run of this setting and seed (config hash + seed tags);
2. a FINISHED child is skipped; a setting some other run already finished becomes a link to it;
3. claim the setting in the store (`Claim`): if another process, of any sweep on any machine, is
   training it right now, wait for it and link to its run, never train it twice;
4. train, resuming from the run folder's checkpoint (`gptvae.train`), curves logged as it goes,
   on this process's share of the machine's cores (`gptvae.device.core_share`);
5. evaluate once: result.json in the run folder holds the final metrics, so a run killed after its
   evaluation does not evaluate again, and no final metric is ever logged twice;
6. log params, final metrics, and artifacts: config, decoded samples, posterior means;
7. mark the child FINISHED and withdraw the claim.

A RunTask is self-contained and picklable: executors (`gptvae.executors`) ship it to a worker.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gptvae.config import Config, config_hash
from gptvae.errors import ClaimLostError
from gptvae.files import CHECKPOINT, MODEL, atomic_write_csv, atomic_write_json, atomic_write_text, save_checkpoint
from gptvae.tracking import (TAG_AUTOCAST, TAG_CHECKPOINT, TAG_CLAIMED_FOR, TAG_DEVICE, TAG_GIT, TAG_HEARTBEAT,
                             TAG_HOLDER, TAG_KIND, TAG_LINEAGE, TAG_NODE, TAG_SAME_AS, TAG_THREADS, TAG_WORKER,
                             Tracker)

RESULT = "result.json"
HEARTBEAT_SECONDS = 30     # how often a claim's holder says it is alive
STALE_SECONDS = 600        # a claim silent for longer is dead (a generous margin for clocks that differ)
POLL_SECONDS = 5           # how often a waiting run looks again
SUMMARY_KEYS = ("valid.neg_elbo", "valid.rec", "valid.kl", "valid.iw_nll_per_token", "valid.mi", "valid.au",
                "valid.lm_nll_per_token", "train.converged", "time.train_seconds", "time.eval_seconds")
ARTIFACTS = ("config.json", "samples.txt", "samples.csv", "posterior_means.csv", "checkpoint_path.txt", MODEL)


@dataclass(frozen=True)
class PlannedRun:
    name: str       # MLflow run name, e.g. "free_bits=0.25 seed=0"
    kind: str       # its model family (model.kind)
    value: object   # the swept factor's value (None for a baseline row or a single run)
    cfg: Config

    @property
    def config_hash(self) -> str:
        return config_hash(self.cfg)

    @property
    def seed(self) -> int:
        return self.cfg.train.seed


@dataclass(frozen=True)
class RunTask:
    """Everything a worker needs to execute one planned run."""

    run: PlannedRun
    experiment: str             # MLflow experiment of the child run
    parent_id: str | None       # the sweep's parent run, if any
    runs_root: str              # checkpoints go to <runs_root>/<experiment>/<hash>-seed<N>/
    tracking_uri: str
    threads: int | None = None  # torch intra-op threads for this run (None: torch's choice)
    gpus: int = 0               # GPUs the run needs (its preset's); an executor that places runs reserves them
    progress: bool = True
    node: str = ""              # the cluster node it trains on, where an executor places runs (Ray's node id)
    lineage: str = ""           # one id for every attempt at this task, where the executor retries a dead one
                                # itself and never runs two at once (Ray's task id): a claim left by an earlier
                                # attempt is dead, on any machine, once it has missed two heartbeats


def run_dir_for(root: str | Path, experiment: str, cfg: Config) -> Path:
    return Path(root) / experiment / f"{config_hash(cfg)}-seed{cfg.train.seed}"


def git_commit() -> str:
    """HEAD of the checkout the package runs from, with "+dirty" when it has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class RunLogger:
    """What the training loop reports, written to one MLflow run: params and tags at the start, metric
    points in batches at each flush. A step already in the store (a resumed run) is never written again."""

    def __init__(self, tracker: Tracker, run_id: str, *, cfg: Config, checkpoint: Path,
                 progress_key: str = "train/loss", claim: "Claim | None" = None, node: str = ""):
        self.tracker, self.run_id, self.cfg, self.checkpoint = tracker, run_id, cfg, checkpoint
        self.node = node
        self.claim = claim
        self.progress_key = progress_key
        self.buffer: list[tuple[str, float, int]] = []
        self.logged_through = tracker.last_step(run_id, progress_key)

    def start(self, *, model, corpus, device, autocast: bool) -> None:
        import torch

        from gptvae.data import corpus_params
        from gptvae.families import num_parameters

        self.tracker.log_params(self.run_id, {**self.cfg.flat(), "model.num_parameters": num_parameters(model),
                                              "objective.free_bits_nats": self.cfg.objective.free_bits_nats,
                                              "data.vocab_size": len(corpus.vocab),
                                              **corpus_params(corpus, batch_tokens=self.cfg.train.batch_tokens)})
        self.precision(autocast)
        self.tracker.set_tags(self.run_id, {TAG_GIT: git_commit(), TAG_DEVICE: device.type,
                                            TAG_THREADS: torch.get_num_threads(),
                                            TAG_CHECKPOINT: str(self.checkpoint.resolve()),
                                            TAG_WORKER: f"{socket.gethostname()}:{os.getpid()}",
                                            **({TAG_NODE: self.node} if self.node else {})})

    def precision(self, autocast: bool) -> None:
        """Tag what this process trains in, at every start and every resume: a run resumed on a machine of the
        other kind (bf16 autocast there, fp32 here) trained in both, and is tagged "mixed"."""
        before = self.tracker.run(self.run_id).data.tags.get(TAG_AUTOCAST)
        precision = autocast if before in (None, str(autocast)) else "mixed"
        if before != str(precision):
            self.tracker.set_tags(self.run_id, {TAG_AUTOCAST: precision})

    def log(self, metrics: dict[str, float], step: int) -> None:
        if step > self.logged_through:
            self.buffer.extend((k, v, step) for k, v in metrics.items())

    def flush(self) -> None:
        if self.claim is not None:
            self.claim.check()   # before every checkpoint: never write on after another process took over
        if self.buffer:
            # the progress key last: a flush cut short leaves its step unlogged, so a resume logs it again
            self.buffer.sort(key=lambda point: point[0] == self.progress_key)
            self.tracker.log_metrics(self.run_id, self.buffer)
            self.logged_through = max(s for _, _, s in self.buffer)
            self.buffer = []


def _summary(metrics: dict) -> dict:
    return {k: metrics.get(k) for k in SUMMARY_KEYS}


def kill_point(name: str) -> None:
    """Fault injection for the tests: GPTVAE_KILL_AT=<name> makes this process kill -9 itself here."""
    if os.environ.get("GPTVAE_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def interrupts_deferred():
    """Hold back Ctrl-C (SIGINT, SIGTERM) while the block runs, e.g. while a stopped run is marked
    KILLED, then deliver it. Only the main thread can do this; elsewhere the block just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    held = [sig for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
            if signal.getsignal(sig) not in (signal.SIG_IGN, signal.SIG_DFL, None)]
    previous = {sig: signal.signal(sig, lambda s, _: caught.append(s)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            raise KeyboardInterrupt


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` of this machine is running: a zombie (killed, not yet reaped by its parent) is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # Linux says a process's state in /proc: Z for a zombie
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):   # no /proc (macOS), or it ended just now
        return not Path("/proc").is_dir()


class Claim:
    """The right to train one setting and seed, held in the store as a run of the gptvae-claims
    experiment, so that it holds across experiments, processes and machines.

    Each claimant writes its own claim, then reads every claim on the key: if its own is the only
    live one, it holds the setting; otherwise it withdraws and waits. With a store whose writes and
    reads are linearizable (a SQL database behind MLflow) two claimants cannot both hold it: the
    later of the two reads sees both claims. A claim is live while its holder's heartbeat is recent
    and, on the holder's own machine, while its process exists. A claim left by an earlier attempt at the
    same executor task (its lineage: RunTask.lineage, Ray's task id) is dead wherever it was made once it
    has missed two heartbeats, not STALE_SECONDS: the executor retries a task only once its attempt died.
    """

    def __init__(self, tracker: Tracker, key: str, child_id: str, *, lineage: str = ""):
        self.tracker, self.key, self.child_id, self.lineage = tracker, key, child_id, lineage
        self.id: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def live(self, claim, now: float) -> bool:
        tags = claim.data.tags
        silent = now - float(tags.get(TAG_HEARTBEAT, 0))
        if self.lineage and tags.get(TAG_LINEAGE) == self.lineage and silent > 2 * HEARTBEAT_SECONDS:
            # an earlier attempt at our own task that missed two beats: Ray retried it because it died (a node
            # Ray wrongly declared dead still beats, so its claim stays live and this attempt waits)
            return False
        host, _, pid = tags.get(TAG_HOLDER, ":").rpartition(":")
        fresh = silent < STALE_SECONDS
        return fresh and (host != socket.gethostname() or (pid.isdigit() and _pid_alive(int(pid))))

    def acquire(self) -> str | None:
        """Hold the setting (None), or the child run id of the live claim that already holds it."""
        now = time.time()
        self.id = self.tracker.create_claim(self.key, {
            TAG_HOLDER: f"{socket.gethostname()}:{os.getpid()}", TAG_HEARTBEAT: f"{now:.0f}",
            TAG_CLAIMED_FOR: self.child_id, **({TAG_LINEAGE: self.lineage} if self.lineage else {})})
        try:
            rivals = []
            for claim in self.tracker.claims(self.key):
                if claim.info.run_id == self.id:
                    continue
                if self.live(claim, now):
                    rivals.append(claim)
                else:   # its holder is gone: withdraw it for them
                    self.tracker.delete_run(claim.info.run_id)
        except BaseException:
            self.release()   # a claim we cannot finish making is withdrawn, not leaked
            raise
        if rivals:
            self.release()
            return rivals[0].data.tags.get(TAG_CLAIMED_FOR, rivals[0].info.run_id)
        self._beat = threading.Thread(target=self._heartbeat, name=f"claim {self.key}", daemon=True)
        self._beat.start()
        return None

    def check(self) -> None:
        """Raise ClaimLostError if the claim was withdrawn by another process (it saw no heartbeat for
        STALE_SECONDS, or the executor retried this task elsewhere): this process must stop training it."""
        if self.id is not None and self.tracker.run(self.id).info.lifecycle_stage == "deleted":
            raise ClaimLostError(f"the claim on {self.key} was taken over by another process (this one's "
                                 f"heartbeat did not reach {self.tracker.uri} in time, or the executor retried "
                                 "its task elsewhere); this process stopped training it")

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.tracker.set_tags(self.id, {TAG_HEARTBEAT: f"{time.time():.0f}"})
            except Exception:   # a missed beat is harmless; the next one, or the run's own error, tells
                pass

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self.id is not None:
            self.tracker.delete_run(self.id)
            self.id = None


def claim_key(run: PlannedRun) -> str:
    return f"{run.config_hash}-seed{run.seed}"


def execute(task: RunTask, *, tracker: Tracker | None = None, stop_after: int | None = None,
            wait: bool = True) -> dict:
    """Carry one planned run through its lifecycle. Returns a summary row (name, status, key metrics).

    wait: when another process is training this setting, wait for it and link to its run (True), or
    return at once with status "waiting for ..." so that the caller can come back later (False).
    """
    run, cfg = task.run, task.run.cfg
    tracker = tracker or Tracker(task.tracking_uri)
    exp_id = tracker.experiment_id(task.experiment)
    run_id, status = tracker.child_run(exp_id, config_hash=run.config_hash, seed=run.seed, name=run.name,
                                       parent_id=task.parent_id, tags={TAG_KIND: run.kind})
    row = {"name": run.name, "kind": run.kind, "value": run.value, "seed": run.seed, "run_id": run_id}
    if status == "FINISHED":
        return {**row, "status": "skipped (finished)", **_summary(tracker.resolve(run_id).data.metrics)}

    def linked():
        twin = tracker.finished_twin(config_hash=run.config_hash, seed=run.seed, exclude_run=run_id)
        if twin is None:
            return None
        tracker.set_tags(run_id, {TAG_SAME_AS: twin.info.run_id})
        tracker.set_status(run_id, "FINISHED")
        return {**row, "status": f"reused {twin.info.run_id[:8]}", **_summary(twin.data.metrics)}

    def finished_here():   # another process executing this very child (the same sweep twice) finished it
        if tracker.status(run_id) != "FINISHED":
            return None
        return {**row, "status": "skipped (finished)", **_summary(tracker.resolve(run_id).data.metrics)}

    while True:
        if (done := finished_here() or linked()) is not None:
            return done
        claim = Claim(tracker, claim_key(run), run_id, lineage=task.lineage)
        holder = claim.acquire()
        if holder is None:
            break
        if holder != run_id:   # the holder trains another child; this one waits (its own holder sets it)
            tracker.set_status(run_id, "SCHEDULED")
        if not wait:
            return {**row, "status": f"waiting for {holder[:8]}"}
        time.sleep(POLL_SECONDS * (1 + random.random()))

    try:
        if (done := finished_here() or linked()) is not None:   # it finished between our look and our claim
            return done
        run_dir = run_dir_for(task.runs_root, task.experiment, cfg)
        try:
            tracker.set_status(run_id, "RUNNING")
            logger = RunLogger(tracker, run_id, cfg=cfg, checkpoint=run_dir / CHECKPOINT, claim=claim,
                               node=task.node)
            from gptvae.cores import core_share   # torch: only where training happens

            with core_share(task.threads):
                outcome = _train_and_record(task, run_dir, tracker, run_id, logger, stop_after)
        except BaseException as err:
            with interrupts_deferred():   # a second Ctrl-C must not leave the run RUNNING
                try:
                    if isinstance(err, ClaimLostError):
                        raise   # the process that took over owns the run's status now
                    logger.flush()
                finally:
                    if not isinstance(err, ClaimLostError):
                        tracker.set_status(run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
    finally:
        with interrupts_deferred():
            claim.release()
    return {**row, **outcome}


def _train_and_record(task: RunTask, run_dir: Path, tracker: Tracker, run_id: str, logger: RunLogger,
                      stop_after: int | None) -> dict:
    import pandas as pd

    from gptvae.evaluation import COUNT_KEYS, decode_examples, final_evaluation, posterior_means, samples_text
    from gptvae.train import train

    cfg = task.run.cfg
    trained = train(cfg, run_dir=run_dir, logger=logger, progress=task.progress, stop_after=stop_after)
    logger.flush()
    if not trained.finished:
        tracker.set_status(run_id, "KILLED")
        return {"status": f"stopped at step {trained.step}"}

    # the final evaluation, once: its tables, then result.json, are written before anything is logged
    result_path = run_dir / RESULT
    final = json.loads(result_path.read_text()) if result_path.is_file() else None
    if final is None or final.get("config_hash") != config_hash(cfg):
        started = time.time()
        report = final_evaluation(trained.model, trained.corpus, cfg, autocast=trained.autocast,
                                  progress=task.progress)
        for name, frame in report.files().items():
            atomic_write_csv(run_dir / name, frame)
        final = {**report.metrics, **trained.convergence(cfg), "time.train_seconds": trained.train_seconds,
                 "time.eval_seconds": time.time() - started, "files": sorted(report.files())}
        atomic_write_json(result_path, {**final, "config_hash": config_hash(cfg)})
    final.pop("config_hash", None)
    tables = final.pop("files", [])   # the per-sentence and per-unit tables beside result.json

    still_ours = logger.claim.check if logger.claim is not None else (lambda: None)
    still_ours()   # the final evaluation takes minutes: never log it if another process took the run over
    counts = {k: v for k, v in final.items() if k.split(".", 1)[-1] in COUNT_KEYS}
    tracker.log_params(run_id, counts)
    logged = tracker.run(run_id).data.metrics
    tracker.log_metrics(run_id, [(k, v, cfg.train.steps) for k, v in final.items()
                                 if k not in counts and k not in logged])
    kill_point("after-final-metrics")

    examples = decode_examples(trained.model, trained.corpus, cfg)
    atomic_write_text(run_dir / "samples.txt", samples_text(examples))
    atomic_write_csv(run_dir / "samples.csv", pd.DataFrame(examples, columns=["section", "text"]))
    means = posterior_means(trained.model, trained.corpus)
    if not means.empty:   # a model without a latent has none
        atomic_write_csv(run_dir / "posterior_means.csv", means)
    atomic_write_text(run_dir / "checkpoint_path.txt", f"{(run_dir / CHECKPOINT).resolve()}\n")
    # the weights travel with the run (no optimizer state): evaluate and sample load them on any machine
    save_checkpoint(run_dir / MODEL, {"config": cfg.to_dict(), "model": trained.model.state_dict(),
                                      "vocab_size": len(trained.corpus.vocab)})
    for name in (*ARTIFACTS, *tables):
        if (run_dir / name).is_file():
            tracker.log_artifact(run_id, run_dir / name)
    still_ours()
    tracker.set_status(run_id, "FINISHED")
    return {"status": "resumed" if trained.resumed_from else "trained", **_summary(final)}


__all__ = ["PlannedRun", "RunLogger", "RunTask", "SUMMARY_KEYS", "execute", "run_dir_for"]
