"""``colloquy serve`` under a CPU profiler of every thread (yappi), switched on and off by
signals, so bench/load.py profiles only the load it sends (not start-up, not warm-up).

    python bench/profiled_serve.py OUT.prof serve ARGS...    # SIGUSR1: start, SIGUSR2: stop + save

cProfile sees only the thread that starts it; the turn's steps run on a thread pool.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

import yappi

from colloquy.cli import main


def start(signum: int, frame: FrameType | None) -> None:
    yappi.set_clock_type("cpu")
    yappi.clear_stats()
    yappi.start(builtins=True, profile_threads=True)


def stop(signum: int, frame: FrameType | None) -> None:
    yappi.stop()
    yappi.get_func_stats().save(OUT, type="pstat")
    with open(OUT + ".done", "w") as f:
        f.write("ok")


if __name__ == "__main__":
    OUT = sys.argv[1]
    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    raise SystemExit(main(sys.argv[2:]))
