"""The process-pool executor: `jobs` runs at once in local worker processes, cores shared equally."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from multiprocessing import get_context

from gptvae.executors import threads_per_job
from gptvae.run import execute


class Executor:
    def __init__(self, *, jobs: int):
        self.jobs = jobs

    def run(self, tasks):
        threads = threads_per_job(self.jobs)
        pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=get_context("spawn"))
        try:
            futures = [pool.submit(execute, replace(task, threads=threads, progress=False)) for task in tasks]
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            # Ctrl-C reaches the workers too (one process group): their runs are marked KILLED;
            # nothing queued starts
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
