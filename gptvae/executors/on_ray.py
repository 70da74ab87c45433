"""The Ray executor: each planned run is a Ray task, on the cluster at RAY_ADDRESS or on a Ray started here.

    RAY_ADDRESS=ray://head:10001 or head:6379   a cluster started with `ray start` (laptop, cloud, SLURM)
    unset                                        a local Ray for this sweep, shut down at its end

A task reserves `--jobs` CPUs (torch gets as many threads), and the GPUs its preset asks for (RunTask.gpus:
one at the gpu preset). The driver only plans: the parent run is made here, each child in its task (`gptvae.run.execute`,
linked to the parent by mlflow.parentRunId), so every worker must reach the tracking store: a server
(`make mlflow-server`, MLFLOW_TRACKING_URI=http://...), never a SQLite file, unless the cluster is this machine.

Faults. A worker that dies (killed, node lost) is retried by Ray up to MAX_RETRIES times; the retry resumes
from the run's last checkpoint under runs_root (shared storage, or the same node) and ends with the numbers of
an uninterrupted run, logging no step twice (`gptvae.run`). Ctrl-C cancels the tasks: one not yet started
never starts, a running one is interrupted and marked KILLED. Running the same sweep again resumes.
"""

from __future__ import annotations

import os
from dataclasses import replace

from gptvae.errors import ClusterError
from gptvae.run import execute

MAX_RETRIES = 3   # a task whose worker died is run again this many times (a Python exception is not retried)


def _execute(task) -> dict:
    return execute(task)


def connect():
    """ray, connected to RAY_ADDRESS or to a new local Ray; (ray, started_here)."""
    try:
        import ray
    except ImportError:
        raise ClusterError("--executor ray needs Ray: pip install -e '.[cluster]' (make installs it when "
                                  "EXECUTOR=ray)") from None
    address = os.environ.get("RAY_ADDRESS") or None
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True, configure_logging=False)
    except Exception as err:   # ConnectionError, and whatever a wrong address raises
        where = f"the Ray cluster at RAY_ADDRESS={address}" if address else "a local Ray"
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ClusterError(f"cannot start or reach {where}: {reason}") from None
    return ray, address is None


class Executor:
    def __init__(self, *, jobs: int = 1):
        self.cpus = jobs   # CPUs (and torch threads) each run reserves

    def run(self, tasks):
        if not tasks:
            return
        ray, started_here = connect()
        remote = ray.remote(_execute)
        pending = [remote.options(num_cpus=self.cpus, num_gpus=task.gpus, max_retries=MAX_RETRIES)
                   .remote(replace(task, threads=self.cpus, progress=False)) for task in tasks]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
        except BaseException:
            for ref in pending:   # queued runs never start; running ones get KeyboardInterrupt and are marked KILLED
                ray.cancel(ref)
            if pending:
                ray.wait(pending, num_returns=len(pending), timeout=60)
            raise
        finally:
            if started_here:
                ray.shutdown()
