"""MLflow tracking: one experiment per ablation, a parent run per sweep, a child run per setting and seed.

The store is MLflow's embedded SQLite database (`sqlite:///mlflow.db` in the working directory) unless
MLFLOW_TRACKING_URI says otherwise. Several processes may write to one SQLite store at once: every
write takes an exclusive file lock beside the database and is retried while SQLite reports a lock,
so concurrent sweeps neither fail nor lose a run.

What one run logs, and in what order, is `gptvae.run`'s; this module only reaches the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from gptvae.errors import TrackingError

DEFAULT_URI = "sqlite:///mlflow.db"
CLAIMS_EXPERIMENT = "gptvae-claims"    # one run per training in progress, deleted when it ends (gptvae.run)

# every tag the suite writes or reads
TAG_HASH = "gptvae.config_hash"        # a child: its setting's config_hash
TAG_SEED = "gptvae.seed"               # a child: its seed
TAG_KIND = "gptvae.kind"               # a child: its model family (model.kind)
TAG_SAME_AS = "gptvae.same_as"         # a child that reuses a finished run of the same setting and seed
TAG_CHECKPOINT = "gptvae.checkpoint"   # a trained run: its checkpoint's absolute path on the machine that trained it
TAG_GIT = "gptvae.git_commit"          # a trained run: the commit it ran from, "+dirty" with local changes
TAG_DEVICE = "gptvae.device"
TAG_AUTOCAST = "gptvae.autocast"
TAG_THREADS = "gptvae.threads"         # a trained run: torch threads it trained with (its numbers are exact per count)
TAG_WORKER = "gptvae.worker"           # a trained run: "<host>:<pid>" of the process that trained it last
TAG_NODE = "gptvae.node"               # a trained run on a cluster: the node it trained on last (Ray's node id)
TAG_SWEEP = "gptvae.sweep_key"         # a parent: spec | preset | dataset | overrides
TAG_FACTOR = "gptvae.factor"           # a parent: the config key its sweep varies
TAG_VALUES = "gptvae.values"           # a parent: its spec's grid, as JSON (names of a categorical factor in order)
TAG_PRESET = "gptvae.preset"
TAG_DATASET = "gptvae.dataset"
TAG_CLAIM = "gptvae.claim"             # a claim: "<config hash>-seed<N>", the setting it is training
TAG_HOLDER = "gptvae.holder"           # a claim: "<host>:<pid>" of the process training it
TAG_HEARTBEAT = "gptvae.heartbeat"     # a claim: unix time of the holder's last sign of life
TAG_CLAIMED_FOR = "gptvae.claimed_for" # a claim: the child run it trains into
TAG_LINEAGE = "gptvae.lineage"         # a claim: the executor's id for every attempt at one task (Ray's task id)
TAG_PARENT = "mlflow.parentRunId"      # MLflow's own: nests children under their parent in the UI
TAG_NOTE = "mlflow.note.content"       # MLflow's own: the description shown in the UI


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:"):
        return None
    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
    return Path(path) if path else None


def store_exists(uri: str) -> bool:
    """False only for a SQLite store whose file does not exist yet (nothing can be in it)."""
    path = _sqlite_path(uri)
    return path is None or path.exists()


def check_uri(uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast with one clear message instead of MLflow's minutes of retries."""
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        path = _sqlite_path(uri)
        if path is None:
            raise TrackingError(f"tracking URI {uri!r} has no database path; use e.g. sqlite:///mlflow.db")
        parent = path.resolve().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise TrackingError(f"tracking URI {uri!r}: folder {parent} does not exist or is not writable")
        if path.exists() and (not path.is_file() or not os.access(path, os.W_OK)):
            raise TrackingError(f"tracking store {path} is not a writable file; fix its permissions or point "
                                "MLFLOW_TRACKING_URI at another store")
    elif scheme in ("http", "https"):
        probe = uri.rstrip("/") + "/health"
        try:
            urllib.request.urlopen(probe, timeout=timeout).close()
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise TrackingError(
                f"tracking server {uri!r} is unreachable ({getattr(err, 'reason', err)}); start it "
                f"(`make mlflow-server`) or unset MLFLOW_TRACKING_URI to use the local {DEFAULT_URI}"
            ) from None
    elif scheme in ("", "file"):
        pass
    else:
        raise TrackingError(f"tracking URI {uri!r} has an unsupported scheme {scheme!r}; use sqlite:///, http(s):// or a path")


# what the store's database says when it cannot be used -> what we tell the user
STORE_FAILURES = {
    "file is not a database": "is not an MLflow store (the file is not an SQLite database)",
    "readonly database": "is read-only",
    "database or disk is full": "is on a full disk",
    "disk i/o error": "cannot be read or written (disk I/O error)",
    "unable to open database file": "cannot be opened",
}


def store_failure(uri: str, err: Exception) -> TrackingError | None:
    """A one-line TrackingError for a store that cannot be used, or None for any other error."""
    text = str(err).lower()
    for needle, reason in STORE_FAILURES.items():
        if needle in text:
            return TrackingError(f"tracking store {uri} {reason}; fix it, or point MLFLOW_TRACKING_URI at "
                                 "another store, then run the same command again")
    return None


class Tracker:
    """A thin, lock-aware wrapper of MlflowClient with the queries the suite needs."""

    def __init__(self, uri: str | None = None):
        from mlflow.tracking import MlflowClient

        self.uri = uri or tracking_uri()
        check_uri(self.uri)
        db = _sqlite_path(self.uri)
        self._lock_path = db.with_name(db.name + ".lock") if db else None
        # a SQLite store keeps its artifacts beside the database, not under whatever folder the process that
        # created the experiment ran in (MLflow's default, ./mlruns: deleting that folder loses them)
        self._artifacts = (db.resolve().parent / "mlruns").as_uri() if db else None
        fresh_lock = self._lock_path is not None and not self._lock_path.exists()
        try:
            self.client = self.call(MlflowClient, tracking_uri=self.uri)   # under the lock: the schema must not race
            self.call(self.client.search_experiments, max_results=1)
        except BaseException:
            if fresh_lock:   # leave nothing behind for a store we could not use
                self._lock_path.unlink(missing_ok=True)
            raise

    @contextlib.contextmanager
    def locked(self):
        if self._lock_path is None:
            yield
            return
        try:
            handle = open(self._lock_path, "a")
        except OSError as err:
            raise TrackingError(f"tracking store {self.uri}: cannot open its lock file {self._lock_path} "
                                f"({err.strerror}); the store's folder must be writable") from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def call(self, fn, *args, retries: int = 20, **kwargs):
        """Run one store operation under the lock, retrying while SQLite says it is busy."""
        for attempt in range(retries):
            try:
                with self.locked():
                    return fn(*args, **kwargs)
            except Exception as err:  # MLflow wraps sqlite3.OperationalError in several types
                failure = store_failure(self.uri, err)
                if failure is not None:
                    raise failure from None
                if "locked" not in str(err).lower() or attempt == retries - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))

    # experiments and runs

    def experiment_id(self, name: str) -> str:
        def get_or_create():
            found = self.client.get_experiment_by_name(name)
            return found.experiment_id if found else self.client.create_experiment(name, artifact_location=(
                f"{self._artifacts}/{name}" if self._artifacts else None))

        return self.call(get_or_create)

    def find_experiment(self, name: str) -> str | None:
        found = self.call(self.client.get_experiment_by_name, name)
        return found.experiment_id if found else None

    def finished_runs(self, *, config_hash: str | None = None, seed: int | None = None) -> list:
        """Every FINISHED child run (trained or linked) of any experiment, oldest first; of one setting
        and seed when given."""
        query = "attributes.status = 'FINISHED'"
        if config_hash is not None:
            query += f" and tags.`{TAG_HASH}` = '{config_hash}' and tags.`{TAG_SEED}` = '{seed}'"

        def search():
            ids = [e.experiment_id for e in self.client.search_experiments()]
            return self.client.search_runs(ids, filter_string=query, max_results=50_000,
                                           order_by=["attributes.start_time ASC"])

        return [r for r in self.call(search) if TAG_HASH in r.data.tags]

    def trained_runs(self, experiment: str, *, kind: str | None = None) -> list[str]:
        """The run ids that trained the finished children of an experiment (a linked child gives the run it
        reuses), oldest first; only those of model family `kind` when given. A link to a run this store does
        not hold (one exported by a sweep on another machine) gives nothing: there is no run here to read."""
        exp_id = self.find_experiment(experiment)
        if exp_id is None:
            raise TrackingError(f"experiment {experiment!r} is not in the store {self.uri}")
        runs = self.call(self.client.search_runs, [exp_id], filter_string="attributes.status = 'FINISHED'",
                         max_results=5000, order_by=["attributes.start_time ASC"])
        out = []
        for run in runs:
            tags = run.data.tags
            if TAG_HASH not in tags or (kind is not None and tags.get(TAG_KIND) != kind):
                continue
            source = tags.get(TAG_SAME_AS, run.info.run_id)
            if source == run.info.run_id or source in out or self.find_run(source) is not None:
                out.append(source)
        return list(dict.fromkeys(out))

    def parent_run(self, experiment_id: str, sweep_key: str, *, name: str, tags: dict[str, str]) -> str:
        """The sweep's parent run: found by its key, so a re-run sweep keeps adding to the same one."""
        def find_or_create():
            found = self.client.search_runs([experiment_id], filter_string=f"tags.`{TAG_SWEEP}` = '{sweep_key}'",
                                            max_results=1)
            if found:
                return found[0].info.run_id
            run = self.client.create_run(experiment_id, run_name=name, tags={TAG_SWEEP: sweep_key, **tags})
            return run.info.run_id

        return self.call(find_or_create)

    def child_run(self, experiment_id: str, *, config_hash: str, seed: int, name: str,
                  parent_id: str | None, tags: dict[str, str]):
        """(run_id, status) of the child for this setting and seed, created (SCHEDULED) if it does not exist yet."""
        def find_or_create():
            query = f"tags.`{TAG_HASH}` = '{config_hash}' and tags.`{TAG_SEED}` = '{seed}'"
            found = self.client.search_runs([experiment_id], filter_string=query, max_results=10,
                                            order_by=["attributes.start_time ASC"])
            if found:
                return found[0].info.run_id, found[0].info.status
            all_tags = {TAG_HASH: config_hash, TAG_SEED: str(seed), **tags}
            if parent_id:
                all_tags[TAG_PARENT] = parent_id
            run = self.client.create_run(experiment_id, run_name=name, tags=all_tags)
            # MLflow makes runs RUNNING; a child is RUNNING only while a process that holds its claim trains it
            self.client.update_run(run.info.run_id, status="SCHEDULED")
            return run.info.run_id, "SCHEDULED"

        return self.call(find_or_create)

    def finished_twin(self, *, config_hash: str, seed: int, exclude_run: str | None = None):
        """A FINISHED run of this config and seed in any experiment that was trained, not linked (or None)."""
        return next((r for r in self.finished_runs(config_hash=config_hash, seed=seed)
                     if TAG_SAME_AS not in r.data.tags and r.info.run_id != exclude_run), None)

    # claims: who is training which setting right now (gptvae.run.Claim)

    def create_claim(self, key: str, tags: dict[str, str]) -> str:
        exp_id = self.experiment_id(CLAIMS_EXPERIMENT)
        return self.call(self.client.create_run, exp_id, run_name=key, tags={TAG_CLAIM: key, **tags}).info.run_id

    def claims(self, key: str) -> list:
        """Every claim on `key` that has not been withdrawn, oldest first."""
        exp_id = self.experiment_id(CLAIMS_EXPERIMENT)
        return self.call(self.client.search_runs, [exp_id], filter_string=f"tags.`{TAG_CLAIM}` = '{key}'",
                         max_results=100, order_by=["attributes.start_time ASC"])

    def delete_run(self, run_id: str) -> None:
        self.call(self.client.delete_run, run_id)

    def resolve(self, run_id: str):
        """The run whose numbers a child stands for: itself, or the trained run it links to."""
        run = self.run(run_id)
        source = run.data.tags.get(TAG_SAME_AS)
        return self.run(source) if source else run

    def set_status(self, run_id: str, status: str) -> None:
        if status in ("RUNNING", "SCHEDULED"):   # not over: no end time
            self.call(self.client.update_run, run_id, status=status)
        else:
            self.call(self.client.set_terminated, run_id, status=status)

    def status(self, run_id: str) -> str:
        return self.call(self.client.get_run, run_id).info.status

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        existing = self.call(self.client.get_run, run_id).data.params
        new = [Param(k, str(v)) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):  # MLflow caps a batch at 100 params
            self.call(self.client.log_batch, run_id, params=new[i:i + 100])

    def params(self, run_id: str) -> dict[str, str]:
        return self.call(self.client.get_run, run_id).data.params

    def set_tags(self, run_id: str, tags: dict) -> None:
        from mlflow.entities import RunTag

        self.call(self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, run_id: str, points: list[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(s)) for k, v, s in points]
        for i in range(0, len(metrics), 1000):  # MLflow caps a batch at 1000 metrics
            self.call(self.client.log_batch, run_id, metrics=metrics[i:i + 1000])

    def last_step(self, run_id: str, key: str) -> int:
        """The last step already logged for `key` (-1 if none): where a resumed run starts logging."""
        history = self.call(self.client.get_metric_history, run_id, key)
        return max((m.step for m in history), default=-1)

    def log_artifact(self, run_id: str, path: str | Path) -> None:
        self.call(self.client.log_artifact, run_id, str(path))

    def run(self, run_id: str):
        return self.call(self.client.get_run, run_id)

    def find_run(self, run_id: str):
        """The run, or None when this store does not hold it (e.g. one trained on a machine since lost)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.run(run_id)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
