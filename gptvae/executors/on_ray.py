"""The Ray executor: each planned run is a Ray task, on the cluster at RAY_ADDRESS or on a Ray started here.

    RAY_ADDRESS=head:6379      a cluster started with `ray start` (a laptop, a cloud, a SLURM allocation)
    unset                      a local Ray for this sweep, on this machine's cores, shut down at its end

A task reserves `--jobs` CPUs (torch gets as many threads) and the GPUs its preset asks for (RunTask.gpus: one
at the gpu preset); Ray decides how many run at once and where. The driver plans and makes the parent run;
each child is made and trained in its task (`gptvae.run.execute`, linked by mlflow.parentRunId). So every node
must reach the tracking store (`make mlflow-server`, MLFLOW_TRACKING_URI=http://...; a SQLite file only when
the whole cluster is this machine), have this project installed at the same commit, and see runs_root and
GPTVAE_DATA_DIR at the same paths (shared storage) when a run may move between nodes. The driver's
GPTVAE_* and MLFLOW_TRACKING_* (credentials) variables are passed on to the tasks.

Faults. A task whose worker dies (killed, out of memory, node lost) is retried by Ray up to MAX_RETRIES
times; the retry resumes from the run's last checkpoint under runs_root and ends with the numbers of an
uninterrupted run, logging no step twice (`gptvae.run`). A Python exception is not retried: it fails the
run and stops the sweep, as with the local executors. Ctrl-C or `kill` cancels the tasks: those not started
never start, running ones are interrupted and marked KILLED. A driver killed outright takes its tasks with it
(Ray kills the tasks of a dead driver); running the same sweep again resumes them. Ray's retry of a task
takes over the claim its dead attempt left, on whichever machine it had run, once that claim has missed two
heartbeats (the claim carries Ray's task id, the same for every attempt); a claim left by a sweep that is
gone is taken over once its heartbeat is stale (`gptvae.run.STALE_SECONDS`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path

from gptvae.errors import ClusterError
from gptvae.run import execute

MAX_RETRIES = 3   # a task whose worker died is run again this many times (a Python exception is not retried)
PASSED_ON = ("GPTVAE_", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
             "MLFLOW_TRACKING_INSECURE_TLS")   # the driver's variables its tasks see (by prefix)
PATHS = ("GPTVAE_DATA_DIR",)                   # made absolute first: a worker's working directory is not ours


def _execute(task) -> dict:
    """In the worker: record where the run trains, then carry it through its lifecycle."""
    import ray

    context = ray.get_runtime_context()
    return execute(replace(task, node=context.get_node_id(), lineage=context.get_task_id()))


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ON)}
    return {k: str(Path(v).resolve()) if k in PATHS else v for k, v in env.items()}


def _absolute(task):
    """A task whose store and runs_root do not depend on the worker's working directory."""
    uri = task.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return replace(task, tracking_uri=uri, runs_root=str(Path(task.runs_root).resolve()))


def _check_reachable(address: str, *, timeout: float = 5.0) -> bool:
    """One clear error in seconds for a head that is not there (ray.init would retry for minutes). True when
    the address's port answered; False for "auto" and the like, which Ray resolves itself."""
    host, sep, port = address.split("://")[-1].rpartition(":")
    if not sep or not port.isdigit():
        return False
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ClusterError(f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({err.strerror or err}); start "
                           "its head with `ray start --head` (README, 'On a cluster'), or unset RAY_ADDRESS for a "
                           "local Ray") from None
    return True


def connect():
    """ray, connected to RAY_ADDRESS or to a new local Ray; (ray, started_here)."""
    try:
        import ray
    except ImportError:
        raise ClusterError("--executor ray needs Ray: pip install -e '.[cluster]' (make installs it when "
                           "EXECUTOR=ray)") from None
    address = os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return ray, False
    answered = bool(address) and _check_reachable(address)
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 configure_logging=False, runtime_env={"env_vars": _environment()})
    except Exception as err:   # ConnectionError, and whatever a wrong address raises
        raise ClusterError(_refusal(address, err, answered=answered)) from None
    return ray, address is None


def _refusal(address: str | None, err: BaseException, *, answered: bool) -> str:
    """The one line for a ray.init that failed. `answered`: the address's port took a connection, so a head is
    there and refused this driver, most often for Ray's token authentication (Ray 2.5x turns it on for
    `ray start` when ~/.ray/auth_token exists, and a driver without RAY_AUTH_MODE=token sends no token)."""
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    if not address:
        return f"cannot start a local Ray: {reason}"
    if not answered:
        return (f"cannot reach the Ray cluster at RAY_ADDRESS={address}: {reason}; start it with `ray start --head` "
                "(README, 'On a cluster'), or unset RAY_ADDRESS for a local Ray")
    if "auth" in str(err).lower() or os.environ.get("RAY_AUTH_MODE") != "token":
        hint = ("; if the cluster uses token authentication (Ray turns it on for `ray start` when ~/.ray/auth_token "
                "exists), set RAY_AUTH_MODE=token with the same token here, or RAY_AUTH_MODE=disabled on every "
                "node and here (README, 'On a cluster')")
    else:
        hint = "; check that it is a Ray head of the same Ray version (`ray status` there)"
    return f"the Ray cluster at RAY_ADDRESS={address} answers but refused this driver: {reason}{hint}"


class Executor:
    def __init__(self, *, jobs: int = 1):
        self.cpus = jobs   # CPUs (and torch threads) each run reserves
        self.ray, self.started_here = connect()   # here, so that a cluster out of reach fails before anything is logged

    def run(self, tasks):
        ray = self.ray
        try:
            remote = ray.remote(_execute)
            pending = [remote.options(num_cpus=self.cpus, num_gpus=task.gpus, max_retries=MAX_RETRIES,
                                      retry_exceptions=False, name=f"gptvae {task.run.name}")
                       .remote(replace(_absolute(task), threads=self.cpus, progress=False)) for task in tasks]
            try:
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    try:
                        yield ray.get(done[0])
                    except ray.exceptions.RayTaskError as err:   # the run's own exception, raised here as itself
                        cause = getattr(err, "cause", None)
                        raise (cause if isinstance(cause, BaseException) else err.as_instanceof_cause()) from None
                    except ray.exceptions.WorkerCrashedError:
                        raise ClusterError(f"a run's worker died {MAX_RETRIES + 1} times; the runs still in the "
                                           "sweep were cancelled; run the same command again to resume") from None
            except BaseException:
                for ref in pending:   # queued runs never start; running ones get KeyboardInterrupt: marked KILLED
                    ray.cancel(ref)
                if pending:
                    ray.wait(pending, num_returns=len(pending), timeout=60)
                raise
        finally:
            if self.started_here:
                ray.shutdown()
