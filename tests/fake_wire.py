"""What both fake provider servers share: waiting the way a real provider generates, while
noticing at once a client that hangs up (so a test can assert the upstream call was cut)."""

from __future__ import annotations

import select
import socket
import threading
import time


class Drops:
    """Connections the fake saw the client drop before the answer was complete:
    ``times`` holds the ``time.monotonic()`` at which each drop was noticed."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.event = threading.Event()

    def record(self) -> None:
        self.times.append(time.monotonic())
        self.event.set()

    def wait(self, timeout: float) -> bool:
        return self.event.wait(timeout)


def wait_unless_dropped(sock: socket.socket, seconds: float, drops: Drops) -> bool:
    """Sleep ``seconds`` unless the client closes the connection first (then record the drop
    and return False). A client waiting for an answer sends nothing, so a readable socket
    means end of file: the hang-up is seen the moment it happens."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            continue
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except OSError:
            data = b""
        if not data:
            drops.record()
            return False
        time.sleep(min(left, 0.01))  # a pipelined request: not a hang-up, keep waiting
