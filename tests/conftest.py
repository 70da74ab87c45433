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
