"""The serial executor: one run after another, in this process, with progress bars."""

from __future__ import annotations

from gptvae.run import execute


class Executor:
    def __init__(self, *, jobs: int = 1):
        self.jobs = jobs

    def run(self, tasks):
        for task in tasks:
            yield execute(task)
