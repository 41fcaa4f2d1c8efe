"""The service's step pool (colloquy.server.steps): two threads while steps compute, more only
while they wait, never more than its maximum; results, errors and cancellations as any
Executor's."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, wait

import pytest

from colloquy.server import steps
from colloquy.server.steps import StepPool


def _spin(seconds: float) -> int:
    end = time.thread_time() + seconds
    n = 0
    while time.thread_time() < end:
        n += 1
    return n


def test_computing_steps_stay_on_two_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # A step is "stuck" after steps.STUCK of wall time; a loaded test machine can stretch a
    # 2 ms step past the 50 ms default, so the bound is widened here (what is tested is that
    # steps which finish are never a reason to add threads).
    monkeypatch.setattr(steps, "STUCK", 2.0)
    pool = StepPool(16)
    futures = [pool.submit(_spin, 0.002) for _ in range(300)]  # ~0.6 s of pure CPU, queued
    wait(futures, timeout=60)
    assert all(f.result() > 0 for f in futures)
    assert pool.threads == 2  # busy threads that compute: another would only take turns
    pool.shutdown()


def test_waiting_steps_get_more_threads_up_to_the_limit() -> None:
    pool = StepPool(6)
    gate = threading.Event()
    running = threading.Semaphore(0)

    def blocked() -> str:
        running.release()
        gate.wait(30)
        return "done"

    futures = [pool.submit(blocked) for _ in range(10)]
    for _ in range(6):  # the pool grows while its threads wait: six run at once
        assert running.acquire(timeout=10)
    time.sleep(0.2)
    assert pool.threads == 6  # and never more than its maximum
    assert not running.acquire(timeout=0.1)
    gate.set()
    assert [f.result(timeout=10) for f in futures] == ["done"] * 10
    pool.shutdown()
    assert pool.threads == 0


def test_a_step_waiting_on_a_later_step_does_not_deadlock() -> None:
    pool = StepPool(8)
    later = threading.Event()
    first = [pool.submit(later.wait, 30) for _ in range(2)]  # both core threads wait...
    time.sleep(0.05)
    pool.submit(later.set).result(timeout=10)  # ...on a step queued behind them
    assert all(f.result(timeout=10) for f in first)
    pool.shutdown()


def test_errors_and_cancellation_reach_the_caller() -> None:
    pool = StepPool(1)
    gate = threading.Event()
    busy = pool.submit(gate.wait, 30)

    def boom() -> None:
        raise ValueError("step failed")

    failing = pool.submit(boom)
    queued = pool.submit(_spin, 0.0)
    assert queued.cancel()  # not started: one thread, busy
    gate.set()
    assert busy.result(timeout=10) is True
    with pytest.raises(ValueError, match="step failed"):
        failing.result(timeout=10)
    with pytest.raises(CancelledError):
        queued.result()
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(_spin, 0.0)


def test_threads_must_be_positive() -> None:
    with pytest.raises(ValueError):
        StepPool(0)
