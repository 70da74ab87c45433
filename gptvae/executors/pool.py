"""The process-pool executor: `jobs` runs at once in local worker processes, cores shared equally.

Ctrl-C reaches this process only (workers ignore SIGINT). It sets a cancel event that every worker
watches: a run not yet started never starts, and a run in progress is stopped and marked KILLED.
Running the same command again resumes them. A run that fails stops the sweep the same way a serial
sweep stops: nothing new starts, the runs in progress finish, then the error is raised.
"""

from __future__ import annotations

import _thread
import multiprocessing
import signal
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace

from gptvae.executors import threads_per_job
from gptvae.run import execute

_worker = {"cancel": None, "running": False}   # a worker's own state


def _stop_running_run(signum, frame):
    if _worker["running"]:
        raise KeyboardInterrupt


def _watch(cancel) -> None:
    cancel.wait()
    if _worker["running"]:
        _thread.interrupt_main(signal.SIGUSR1)   # -> _stop_running_run in the worker's main thread


def _init_worker(cancel) -> None:
    _worker["cancel"] = cancel
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, _stop_running_run)
    threading.Thread(target=_watch, args=(cancel,), daemon=True).start()


def _run(task) -> dict:
    not_started = {"name": task.run.name, "kind": task.run.kind, "value": task.run.value, "seed": task.run.seed,
                   "status": "cancelled (not started)"}
    _worker["running"] = True
    try:
        if _worker["cancel"].is_set():   # looked at after `running` is set, so the watcher cannot miss us
            return not_started
        return execute(task)
    finally:
        _worker["running"] = False


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
        except (KeyboardInterrupt, GeneratorExit):
            cancel.set()   # stop everything: queued runs never start, running ones are KILLED
            raise
        except BaseException:
            for future in futures:   # a run failed: start nothing new, let the others finish
                future.cancel()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
