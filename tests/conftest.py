import os

import pytest

# no test may download: set before collection, so even import-time code sees it
os.environ["GPTVAE_OFFLINE"] = "1"


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests never read or write the user's dataset cache, and their training processes share the
    cores among themselves only: training elsewhere on the machine does not change their threads."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTVAE_CACHE_DIR", str(tmp_path_factory.mktemp("gptvae-cache")))
        mp.setenv("GPTVAE_RUNTIME_DIR", str(tmp_path_factory.mktemp("gptvae-runtime")))
        yield


MACHINE_CORES = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()


def pytest_configure(config):
    """Under pytest-xdist (`make test`), each worker owns cores of its own, as a node of a cluster would: the
    worker and every process it starts are pinned to them. Two workers' trainers then never fight over a
    core, and a test's runs take the same number of threads whatever the other worker runs, so runs that must
    match bitwise (a killed and resumed sweep against an uninterrupted one) still do."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    index, count = int(worker.removeprefix("gw")), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    mine = cores[index::count] if count <= len(cores) else [cores[index % len(cores)]]
    os.sched_setaffinity(0, mine)
    import torch

    torch.set_num_threads(len(mine))   # its default was read from the whole machine


@pytest.fixture(scope="module")
def every_core():
    """Lift a worker's pin for one module whose processes set their own threads (the Ray cluster's nodes are
    one CPU each): what it starts may run on any core of the machine."""
    if not MACHINE_CORES or set(os.sched_getaffinity(0)) == MACHINE_CORES:
        yield
        return
    pinned = os.sched_getaffinity(0)
    os.sched_setaffinity(0, MACHINE_CORES)
    try:
        yield
    finally:
        os.sched_setaffinity(0, pinned)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("GPTVAE_DATA_DIR"):
        return
    skip = pytest.mark.skip(reason="reads a real corpus: set GPTVAE_DATA_DIR (e.g. ../shared/data)")
    for item in items:
        if "corpus" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _library_warnings_to_the_current_stderr():
    """x-transformers warns through loguru, whose default sink keeps the sys.stderr of import time:
    under pytest's capture that stream is closed later. Write to whatever sys.stderr is now instead."""
    import sys

    from loguru import logger

    logger.remove()
    logger.add(lambda message: sys.stderr.write(message), level="WARNING", format="{level}: {message}")
    yield
