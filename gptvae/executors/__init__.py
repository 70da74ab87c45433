"""Executors: how a sweep's planned runs are carried out. An executor is one module in this folder
plus one entry in EXECUTORS; the module defines

    class Executor:
        def __init__(self, *, jobs: int): ...
        def run(self, tasks: list[RunTask]) -> Iterator[dict]:
            '''Execute every task (gptvae.run.execute), yielding each summary row as it completes.
            On KeyboardInterrupt: cancel what has not started, let running runs be marked KILLED, re-raise.'''

A RunTask is picklable and self-contained (the store's URI, not a connection), so a task can run in
another process or on another machine.
"""

from __future__ import annotations

import importlib

from gptvae.config import require
from gptvae.cores import usable_cores

EXECUTORS = {
    "serial": "gptvae.executors.serial",   # one run after another, in this process
    "pool": "gptvae.executors.pool",       # `jobs` runs at once in local worker processes
    "ray": "gptvae.executors.on_ray",      # a Ray task per run (RAY_ADDRESS or a local Ray), `jobs` CPUs each
}


def check_executor(name: str, *, jobs: int = 1) -> None:
    """One clear error for an executor that cannot be made, before anything is opened."""
    require(name in EXECUTORS, "--executor", name, ", ".join(EXECUTORS))
    require(isinstance(jobs, int) and jobs >= 1, "--jobs", jobs, "an integer >= 1")


def get_executor(name: str, *, jobs: int = 1):
    """The executor, ready: one that needs a cluster has reached it (or raised ClusterError)."""
    check_executor(name, jobs=jobs)
    return importlib.import_module(EXECUTORS[name]).Executor(jobs=jobs)


def threads_per_job(jobs: int) -> int:
    """Each of `jobs` concurrent runs gets an equal share of this machine's cores."""
    return max(1, usable_cores() // jobs)
