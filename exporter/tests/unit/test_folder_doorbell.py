"""The folder's doorbell: a landing wakes one idle fold thread, not all of them (issue 16)."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from tasktree.exporter.background import _Doorbell

_LONG = 30.0  # a wait no test should reach: a thread still waiting is a thread not woken


def _waiters(doorbell: _Doorbell, count: int) -> queue.Queue:
    """Start ``count`` threads waiting on ``doorbell``; each puts what its wait returned."""
    woken: queue.Queue = queue.Queue()
    for _ in range(count):
        threading.Thread(target=lambda: woken.put(doorbell.wait(_LONG)), daemon=True).start()
    return woken


def _until_waiting(doorbell: _Doorbell, count: int) -> None:
    """Until ``count`` threads wait on the doorbell's condition (its waiters' list is private)."""
    deadline = time.monotonic() + 5
    while len(doorbell._condition._waiters) < count:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"fewer than {count} threads are waiting"
        time.sleep(0.01)


def test_one_ring_wakes_one_of_two_waiting_threads_and_the_next_ring_the_other():
    doorbell = _Doorbell()
    woken = _waiters(doorbell, 2)
    _until_waiting(doorbell, 2)

    doorbell.ring()
    assert woken.get(timeout=5) is True
    with pytest.raises(queue.Empty):  # the other thread still waits
        woken.get(timeout=0.2)
    _until_waiting(doorbell, 1)

    doorbell.ring()
    assert woken.get(timeout=5) is True


def test_a_ring_while_no_thread_waits_is_kept_for_the_next_wait_only():
    doorbell = _Doorbell()
    doorbell.ring()  # a landing while every thread folds

    assert doorbell.wait(_LONG) is True  # returns at once: the landing is not missed
    assert doorbell.wait(0.05) is False  # the ring was taken: the next wait is a wait


def test_close_wakes_every_waiting_thread_and_ends_every_later_wait():
    doorbell = _Doorbell()
    woken = _waiters(doorbell, 3)
    _until_waiting(doorbell, 3)

    doorbell.close()

    assert [woken.get(timeout=5) for _ in range(3)] == [True, True, True]
    assert doorbell.wait(_LONG) is True
