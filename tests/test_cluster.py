"""Sweeps on a Ray cluster, tracked by an MLflow server: real processes on 127.0.0.1.

A real `mlflow server` (SQLite behind it, artifacts served through it) and a real two-node Ray cluster, a
head and a second node started with `ray start`, one CPU each. Marked `cluster` (CI runs them;
`pytest -m "not cluster"` leaves them out).
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import psutil
import pytest
from mlflow.tracking import MlflowClient

from gptvae.cores import usable_cores
from gptvae.tracking import CLAIMS_EXPERIMENT, TAG_CLAIM, TAG_HOLDER, TAG_LINEAGE, TAG_NODE, TAG_PARENT, TAG_WORKER
from test_faults import FAST, assert_as_uninterrupted, write_spec

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("every_core")]   # its nodes: one CPU each, on any core
BIN = Path(sys.executable).parent   # the mlflow and ray commands of this environment
NODE_MEMORY = str(100 * 2**20)      # each node's object store: runs pass a few KB, not the default 30% of RAM
# the cluster and its drivers agree on authentication whatever ~/.ray holds (a token there, left by any local
# ray.init, turns it on for `ray start` clusters, and a driver without RAY_AUTH_MODE=token is then refused)
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, *, timeout: float, what: str, every: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (found := check()):
            return found
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`make mlflow-server`'s command: SQLite behind the server, artifacts uploaded and served through it."""
    folder = tmp_path_factory.mktemp("server")
    port = free_port()
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen([BIN / "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
                             "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"

    def healthy():
        assert proc.poll() is None, (folder / "server.log").read_text()[-2000:]
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            return True
        except OSError:
            return False

    wait_for(healthy, timeout=120, what="the MLflow server", every=0.5)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def cluster():
    """A head and a second node on this machine, one CPU each; torn down by killing exactly their processes."""
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))   # short: Ray's socket paths are capped at 107 bytes
    port = free_port()
    env = {**os.environ, **RAY_ENV}
    node = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--object-store-memory", NODE_MEMORY,
            "--disable-usage-stats"]

    def ray_start(*args):
        for attempt in range(3):   # on a loaded machine a node can miss Ray's startup deadline: start it again
            done = subprocess.run([BIN / "ray", "start", *args, *node], env=env, capture_output=True, text=True,
                                  timeout=300)
            if done.returncode == 0 or "timed out during startup" not in done.stderr + done.stdout:
                break
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    try:
        ray_start("--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", str(temp))
        ray_start("--address", f"127.0.0.1:{port}")
        yield f"127.0.0.1:{port}"
    finally:
        for proc in psutil.process_iter(["cmdline"]):   # every process of this cluster names its session folder
            if any(str(temp) in arg for arg in proc.info["cmdline"] or []):
                proc.kill()
        shutil.rmtree(temp, ignore_errors=True)


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gptvae(*args, uri: str, address: str, cwd=None) -> subprocess.Popen:
    env = {**os.environ, **RAY_ENV, "MLFLOW_TRACKING_URI": uri, "RAY_ADDRESS": address}
    return subprocess.Popen([sys.executable, "-m", "gptvae", *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (out[-2000:], err[-3000:])
    return out


def sweep_args(spec: Path, runs: Path, *settings, executor: str = "ray", jobs: int = 1) -> list[str]:
    return ["sweep", str(spec), "--preset", "smoke", "--dataset", "synthetic", "--quiet", "--runs-root", str(runs),
            "--executor", executor, "--jobs", str(jobs), *[f"--set={s}" for s in (*FAST, *settings)]]


def all_runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def test_a_sweep_spreads_over_both_nodes_and_moves_with_the_server(server, cluster, tmp_path):
    """One parent and every child, trained on both nodes, logged through the server; a second invocation adds
    no run; and the results exported from two other folders, without the runs folder, are the same."""
    spec = write_spec(tmp_path, "spread", "objective.free_bits", [0.0, 0.3])   # and the LM: 3 runs
    out = finish(gptvae(*sweep_args(spec, tmp_path / "runs"), uri=server, address=cluster))
    assert out.count(" trained ") == 3, out

    runs = all_runs(server, "ablation-spread")
    [parent] = [r for r in runs if TAG_PARENT not in r.data.tags]
    kids = [r for r in runs if TAG_PARENT in r.data.tags]
    assert parent.info.status == "FINISHED" and len(kids) == 3
    assert {r.data.tags[TAG_PARENT] for r in kids} == {parent.info.run_id}
    assert {r.info.status for r in kids} == {"FINISHED"}
    nodes = {r.data.tags[TAG_NODE] for r in kids}
    assert len(nodes) == 2, f"the runs did not spread over both nodes: {[r.data.tags[TAG_NODE] for r in kids]}"
    assert len({r.data.tags[TAG_WORKER] for r in kids}) >= 2

    again = finish(gptvae(*sweep_args(spec, tmp_path / "runs"), uri=server, address=cluster))
    assert again.count("skipped (finished)") == 3, again
    assert len(all_runs(server, "ablation-spread")) == len(runs)   # nothing added

    shutil.rmtree(tmp_path / "runs")   # nothing below reads the training side's files: only the server
    exports = []
    for clone in ("first", "second"):
        (tmp_path / clone).mkdir()
        finish(gptvae("results", "--out", "export", "--preset", "smoke", uri=server, address="", cwd=tmp_path / clone))
        exports.append(tmp_path / clone / "export")
    for name in ("runs.csv", "samples.csv", "posterior_means.csv"):
        first, second = (pd.read_csv(folder / name) for folder in exports)
        pd.testing.assert_frame_equal(first, second)
    runs_csv = pd.read_csv(exports[0] / "runs.csv")
    assert len(runs_csv) == 3 and set(runs_csv.run_id) == {r.info.run_id for r in kids}
    assert set(pd.read_csv(exports[0] / "samples.csv").run_id) == set(runs_csv.run_id)


def test_a_killed_worker_and_a_killed_driver_resume_exactly(server, cluster, tmp_path):
    """kill -9 a worker mid-run (Ray retries it, and the retry resumes from its checkpoint), then kill -9 the
    driver, then run the sweep again: the numbers of an uninterrupted sweep, no run lost or twice, no step
    logged twice, no claim left behind."""
    spec = write_spec(tmp_path, "faults", "objective.free_bits", [0.0, 0.3])
    longer = ("train.steps=60", "train.eval_every=6")
    reference_uri = f"sqlite:///{tmp_path}/reference.db"
    # one torch thread a run, as on the cluster's one-CPU nodes: the numbers are exact per thread count
    cores = usable_cores()
    finish(gptvae(*sweep_args(spec, tmp_path / "reference-runs", *longer, executor="pool", jobs=cores),
                  uri=reference_uri, address=""))

    runs = tmp_path / "runs"
    driver = gptvae(*sweep_args(spec, runs, *longer), uri=server, address=cluster)
    client = MlflowClient(server)

    def holders() -> dict[int, tuple[str, str]]:   # pid -> (the setting it trains, the Ray task it was made for)
        found = client.get_experiment_by_name(CLAIMS_EXPERIMENT)
        claims = client.search_runs([found.experiment_id]) if found else []
        return {int(c.data.tags[TAG_HOLDER].rpartition(":")[2]):
                (c.data.tags[TAG_CLAIM], c.data.tags.get(TAG_LINEAGE, "")) for c in claims if TAG_HOLDER in c.data.tags}

    def checkpointed() -> dict[int, tuple[str, str]]:   # the holders whose run has a checkpoint (its folder: the key)
        return {pid: held for pid, held in holders().items() if list(runs.glob(f"*/{held[0]}/checkpoint.pt"))}

    def frozen_victim():   # frozen, then checked: Ray reuses a worker, so a pid that just finished its run is no victim
        if not (found := checkpointed()):
            return None
        pid, held = min(found.items())
        try:
            proc = psutil.Process(pid)
            proc.suspend()
        except psutil.NoSuchProcess:
            return None
        if holders().get(pid) == held:
            return pid, held
        proc.resume()
        return None

    victim, (_, lineage) = wait_for(frozen_victim, timeout=240, what="a run with a checkpoint")
    assert lineage, "a claim made by a Ray task carries its task id"
    os.kill(victim, signal.SIGKILL)                                      # a worker, mid-run: Ray retries it
    # the retry is the same Ray task (same id), so it took over its dead attempt's claim, wherever that was made
    [retry] = wait_for(lambda: [pid for pid, (_, task) in holders().items() if task == lineage and pid != victim],
                       timeout=300, what="the retried run's claim, with its first attempt's task id")
    # freeze every run in flight, the retry among them, so that the driver's death finds them mid-run however
    # fast this machine trains (a run that finished first would leave nothing to resume)
    frozen = []
    for pid in holders():
        with contextlib.suppress(psutil.NoSuchProcess):   # a run that ended since: nothing to freeze
            frozen.append(psutil.Process(pid))
            frozen[-1].suspend()
    assert retry in [proc.pid for proc in frozen], "the retried run finished before it could be frozen"
    assert driver.poll() is None, "the sweep ended before its driver could be killed"
    driver.kill()                                                        # the driver, mid-sweep
    driver.communicate(timeout=60)
    # Ray kills the tasks of a dead driver: the frozen workers with them
    wait_for(lambda: not any(alive(proc) for proc in frozen), timeout=120, what="Ray to kill the dead driver's workers")

    out = finish(gptvae(*sweep_args(spec, runs, *longer), uri=server, address=cluster))
    assert "resumed" in out, out   # the retried run at least: it had a checkpoint and was frozen before it finished
    assert_as_uninterrupted(server, reference_uri, "ablation-faults", runs=3)
    assert len([r for r in all_runs(server, "ablation-faults") if TAG_PARENT not in r.data.tags]) == 1
    assert holders() == {}                                                   # no claim left behind


def test_an_unreachable_cluster_or_server_is_one_clear_error(server, tmp_path):
    spec = write_spec(tmp_path, "nowhere", "objective.free_bits", [0.0])
    nowhere = f"127.0.0.1:{free_port()}"
    proc = gptvae(*sweep_args(spec, tmp_path / "runs"), uri=server, address=nowhere)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.strip().count("\n") == 0, err
    assert f"cannot reach the Ray cluster at RAY_ADDRESS={nowhere}" in err
    assert all_runs(server, "ablation-nowhere") == []                      # nothing logged

    dead = f"http://127.0.0.1:{free_port()}"   # checked first: the cluster's address is never tried
    proc = gptvae(*sweep_args(spec, tmp_path / "runs"), uri=dead, address=nowhere)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.strip().count("\n") == 0, err
    assert f"tracking server '{dead}' is unreachable" in err
