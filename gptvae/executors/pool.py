"""The process-pool executor: `jobs` runs at once in local worker processes, cores shared equally.

Ctrl-C reaches this process only (workers ignore SIGINT): it cancels every run not yet started and
asks the workers (SIGUSR1) to stop the runs they are training, which are marked KILLED; then the
sweep stops. Running the same command again resumes them.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace

from gptvae.executors import threads_per_job
from gptvae.run import execute

_cancel = None            # in a worker: set when the sweep was interrupted
_busy = {"running": False}


def _stop_running_run(signum, frame):
    if _busy["running"]:
        raise KeyboardInterrupt


def _init_worker(cancel) -> None:
    global _cancel
    _cancel = cancel
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, _stop_running_run)


def _run(task) -> dict:
    not_started = {"name": task.run.name, "kind": task.run.kind, "value": task.run.value, "seed": task.run.seed,
                   "status": "cancelled (not started)"}
    if _cancel.is_set():
        return not_started
    _busy["running"] = True
    try:
        if _cancel.is_set():   # interrupted between the two looks: nothing has started
            return not_started
        return execute(task)
    finally:
        _busy["running"] = False


class Executor:
    def __init__(self, *, jobs: int):
        self.jobs = jobs

    def run(self, tasks):
        context = multiprocessing.get_context("spawn")
        cancel = context.Event()
        threads = threads_per_job(self.jobs)
        pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=context, initializer=_init_worker,
                                   initargs=(cancel,))
        futures = []
        try:
            futures = [pool.submit(_run, replace(task, threads=threads, progress=False)) for task in tasks]
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            cancel.set()
            for future in futures:
                future.cancel()
            for worker in multiprocessing.active_children():
                try:
                    os.kill(worker.pid, signal.SIGUSR1)
                except ProcessLookupError:
                    pass
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
