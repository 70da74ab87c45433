"""The claim on a setting (gptvae.run.Claim) against a real SQLite store: one holder at a time, dead
holders taken over, a holder that lost its claim told so."""

import socket
import subprocess
import sys
import time

import psutil
import pytest

from gptvae.errors import ClaimLostError
from gptvae.run import Claim
from gptvae.tracking import TAG_HEARTBEAT, TAG_HOLDER, TAG_LINEAGE, Tracker


@pytest.fixture
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path}/mlflow.db")


def test_one_holder_at_a_time(tracker):
    first, second = Claim(tracker, "abc-seed0", "child-1"), Claim(tracker, "abc-seed0", "child-2")
    assert first.acquire() is None
    assert second.acquire() == "child-1"                     # told whose run to wait for
    assert len(tracker.claims("abc-seed0")) == 1             # the loser withdrew its own claim
    assert Claim(tracker, "other-seed0", "child-3").acquire() is None   # another setting is free
    first.release()
    assert second.acquire() is None and len(tracker.claims("abc-seed0")) == 1
    second.release()
    assert tracker.claims("abc-seed0") == []


def test_a_killed_holder_not_yet_reaped_is_dead(tracker):
    """A holder killed but not yet reaped by its parent (a zombie: a Ray worker before its raylet waits for it)
    holds nothing: its claim is taken over at once, not after STALE_SECONDS."""
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tracker.create_claim("abc-seed0", {TAG_HOLDER: f"{socket.gethostname()}:{zombie.pid}",
                                           TAG_HEARTBEAT: f"{time.time():.0f}", "gptvae.claimed_for": "child-1"})
        assert Claim(tracker, "abc-seed0", "child-2").acquire() == "child-1"   # alive: it holds the setting
        zombie.kill()
        while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.01)   # killed, and not waited for: a zombie
        mine = Claim(tracker, "abc-seed0", "child-2")
        assert mine.acquire() is None
        mine.release()
    finally:
        zombie.kill()
        zombie.wait()


def test_a_dead_holder_is_taken_over(tracker):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    tracker.create_claim("abc-seed0", {TAG_HOLDER: f"{socket.gethostname()}:{dead.stdout.strip()}",
                                       TAG_HEARTBEAT: "9999999999", "gptvae.claimed_for": "child-1"})
    mine = Claim(tracker, "abc-seed0", "child-2")
    assert mine.acquire() is None                            # its process is gone: the claim is stale
    assert [c.info.run_id for c in tracker.claims("abc-seed0")] == [mine.id]
    mine.release()


def test_a_silent_holder_elsewhere_is_taken_over_and_a_live_one_is_not(tracker):
    tracker.create_claim("old-seed0", {TAG_HOLDER: "another-host:1", TAG_HEARTBEAT: "1000"})
    tracker.create_claim("new-seed0", {TAG_HOLDER: "another-host:1", TAG_HEARTBEAT: "9999999999"})
    assert Claim(tracker, "old-seed0", "c").acquire() is None
    assert Claim(tracker, "new-seed0", "c").acquire() is not None


def test_a_retry_of_the_same_task_takes_over_its_dead_attempts_claim_on_any_machine(tracker):
    """Ray retries a task only once its attempt died, with the same task id: the retry need not wait 10 minutes
    for a claim made on another machine to go stale, only for it to miss two heartbeats (an attempt Ray wrongly
    took for dead still beats, and keeps its claim). Another task, or no executor lineage, waits."""
    from gptvae.run import HEARTBEAT_SECONDS, STALE_SECONDS

    def left(beat: float) -> None:
        tracker.create_claim("abc-seed0", {TAG_HOLDER: "another-host:1", TAG_HEARTBEAT: f"{beat:.0f}",
                                           TAG_LINEAGE: "task-1", "gptvae.claimed_for": "child-1"})

    left(time.time())                                     # the first attempt still beats: nobody takes it over
    assert Claim(tracker, "abc-seed0", "child-1", lineage="task-1").acquire() == "child-1"
    for claim in tracker.claims("abc-seed0"):
        tracker.delete_run(claim.info.run_id)
    left(time.time() - 3 * HEARTBEAT_SECONDS)            # silent for 3 beats, far from STALE_SECONDS
    assert 3 * HEARTBEAT_SECONDS < STALE_SECONDS
    assert Claim(tracker, "abc-seed0", "child-1", lineage="task-2").acquire() == "child-1"   # another task waits
    assert Claim(tracker, "abc-seed0", "child-1").acquire() == "child-1"
    retry = Claim(tracker, "abc-seed0", "child-1", lineage="task-1")
    assert retry.acquire() is None
    assert [c.info.run_id for c in tracker.claims("abc-seed0")] == [retry.id]
    assert tracker.claims("abc-seed0")[0].data.tags[TAG_LINEAGE] == "task-1"   # and its own retry may take it
    retry.release()


def test_a_holder_whose_claim_was_taken_over_stops(tracker):
    mine = Claim(tracker, "abc-seed0", "child-1")
    assert mine.acquire() is None
    mine.check()                                             # still ours
    tracker.delete_run(mine.id)                              # what a rival does to a claim it finds stale
    with pytest.raises(ClaimLostError, match="taken over by another process"):
        mine.check()
    mine._stop.set()
