"""The serial executor: one run after another, in this process, with progress bars.

A run that another process is training right now is put off until the end, so the sweep trains
what it can first; then it waits for those and links to them.
"""

from __future__ import annotations

from gptvae.run import execute


class Executor:
    def __init__(self, *, jobs: int = 1):
        self.jobs = jobs

    def run(self, tasks):
        later = []
        for task in tasks:
            row = execute(task, wait=False)
            if row["status"].startswith("waiting for"):
                later.append(task)
            else:
                yield row
        for task in later:
            yield execute(task)
