"""The HTTP/1.1 protocol ``colloquy serve`` runs: uvicorn's (httptools when installed, else h11),
with the one answer uvicorn writes itself, a request it cannot parse, given in the service's
JSON error shape instead of a plain-text ``400 Invalid HTTP request received.``

The case that matters: a URL over the server's limit (:data:`MAX_URL_BYTES`), as a long
``GET .../context?message=`` makes. It answers ``414`` with a message saying where the limit is
and what to do (the message's own limit is ``max_message_chars``; a URL carries less when the
text is percent-encoded), so a client reads it as it reads every other refusal. Anything else
the parser refuses answers ``400`` ``invalid_request``. The connection is closed either way, as
uvicorn does.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import error_body, error_flavour

#: The longest request target (path and query) the server reads: httptools' URL limit (2^16 - 1
#: bytes); under h11 the request line and headers share uvicorn's incomplete-event limit.
MAX_URL_BYTES = (1 << 16) - 1
#: h11's own limit on a request head it holds unparsed (h11.Connection's default).
_H11_DEFAULT_LIMIT = 16 * 1024


def _refusal(url: bytes | None, over: str | None) -> bytes:
    """The raw HTTP response refusing a request that could not be parsed: 414 when ``over``
    names the limit it broke, else 400."""
    if over:
        status, reason, kind = 414, b"URI Too Long", "uri_too_long"
        message = f"the request's {over}: send less in the URL (a shorter ?message=)"
    else:
        status, reason, kind = 400, b"Bad Request", "invalid_request"
        message = "the request is not valid HTTP/1.1"
    path = (url or b"").split(b"?", 1)[0].decode("latin-1")
    body = json.dumps(error_body(error_flavour(path, {}), status, kind, message)).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, reason, len(body))) + body


class H11JSONProtocol(H11Protocol):
    """uvicorn's h11 protocol, refusing an unreadable request in JSON (see the module)."""

    def send_400_response(self, msg: str) -> None:
        # h11 refuses a request head over its incomplete-event limit ("Receive buffer too
        # long"); what it holds unread tells that case from a malformed request.
        limit = self.config.h11_max_incomplete_event_size or _H11_DEFAULT_LIMIT
        buffered, _ = self.conn.trailing_data
        head = buffered.split(b"\r\n", 1)[0].split(b" ")
        over = (f"line and headers are over the server's limit ({limit:,} bytes)"
                if len(buffered) > limit else None)
        self.transport.write(_refusal(head[1] if len(head) > 1 else None, over))
        self.transport.close()


HTTPProtocol: type[asyncio.Protocol] = H11JSONProtocol
try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - the server extra installs httptools
    pass
else:
    class HttpToolsJSONProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, refusing an unreadable request in JSON."""

        def send_400_response(self, msg: str) -> None:
            url = getattr(self, "url", b"")
            over = (f"URL is over the server's limit ({MAX_URL_BYTES:,} bytes)"
                    if len(url) > MAX_URL_BYTES else None)
            self.transport.write(_refusal(url, over))
            self.transport.close()

    HTTPProtocol = HttpToolsJSONProtocol

#: What ``colloquy serve`` passes to uvicorn as ``http`` (an import string: workers import it).
PROTOCOL = f"{__name__}:HTTPProtocol"

__all__ = ["HTTPProtocol", "MAX_URL_BYTES", "PROTOCOL"]
