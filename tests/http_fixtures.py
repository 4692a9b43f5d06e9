"""A loopback HTTP file server with per-request fault injection, for download tests.

    with FileServer({"/a.bin": data}) as server:
        server.fail_next("/a.bin", Fault(drop_after=100), Fault(status=500))
        url = server.url("/a.bin")           # http://127.0.0.1:<port>/a.bin
        ...
        server.requests                       # every request seen, with its headers

Faults queued for a path are used one per request, in order; when the queue is empty the file is served
normally (200, or 206 for a `Range: bytes=N-` / `bytes=N-M` request, 416 past the end).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


@dataclass(frozen=True)
class Fault:
    """What goes wrong with one request (fields combine; unset fields mean normal behaviour)."""

    status: int | None = None  # answer with this status and a short text body instead of the file
    delay: float = 0.0  # seconds to wait before answering (to exceed a client timeout)
    drop_after: int | None = None  # announce the full length, send only this many body bytes, close
    hang: float = 0.0  # with drop_after: stay silent this long after those bytes before closing
    ignore_range: bool = False  # answer 200 with the whole file even when a Range was asked
    corrupt: bool = False  # flip every byte of the body
    redirect: str | None = None  # answer 302 with this Location (a path on this server or a URL)
    content_range: str | None = None  # on a 206 answer, send this Content-Range header instead of the true one
    body: bytes | None = None  # answer 200 with these bytes instead of the file (e.g. an HTML error page)
    pace: float = 0.0  # send the body in 64 KiB pieces, pausing this many seconds after each (a slow mirror)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]

    def header(self, name: str) -> str | None:
        """A header's value by case-insensitive name."""
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)


@dataclass
class _State:
    files: dict[str, bytes] = field(default_factory=dict)
    faults: dict[str, deque[Fault]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    ignore_range: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)


class FileServer:
    """Serves in-memory files on 127.0.0.1 from a background thread; use as a context manager."""

    def __init__(self, files: Mapping[str, bytes] | None = None, *, ignore_range: bool = False) -> None:
        self._state = _State(files=dict(files or {}), ignore_range=ignore_range)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self._state))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="FileServer", daemon=True)

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving (interrupting any injected delay) and release the port."""
        self._state.stopping.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        """The full URL of a path on this server."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def add_file(self, path: str, data: bytes) -> None:
        """Serve `data` at `path`."""
        with self._state.lock:
            self._state.files[path] = data

    def fail_next(self, path: str, *faults: Fault) -> None:
        """Queue faults for the next requests of `path`, one per request."""
        with self._state.lock:
            self._state.faults.setdefault(path, deque()).extend(faults)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far (a copy)."""
        with self._state.lock:
            return list(self._state.requests)

    def requests_for(self, path: str) -> list[RecordedRequest]:
        """The requests received for one path."""
        return [r for r in self.requests if r.path == path]


def _handler_for(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class signature
            """Keep test output quiet."""

        def do_HEAD(self) -> None:
            self._serve(send_body=False)

        def do_GET(self) -> None:
            self._serve(send_body=True)

        def _serve(self, *, send_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            with state.lock:
                state.requests.append(RecordedRequest(self.command, path, dict(self.headers.items())))
                queue = state.faults.get(path)
                fault = queue.popleft() if queue else Fault()
                data = state.files.get(path)
                ignore_range = state.ignore_range or fault.ignore_range
            if fault.delay and state.stopping.wait(fault.delay):
                return
            if fault.redirect is not None:
                self._reply(302, b"", {"Location": fault.redirect}, send_body)
                return
            if fault.status is not None:
                self._reply(fault.status, f"injected {fault.status}\n".encode(), {}, send_body)
                return
            if fault.body is not None:
                self._reply(200, fault.body, {}, send_body)
                return
            if data is None:
                self._reply(404, b"not found\n", {}, send_body)
                return
            status, start, end = 200, 0, len(data)
            requested = self.headers.get("Range")
            if requested and not ignore_range:
                parsed = _parse_range(requested, len(data))
                if parsed is None:
                    self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"}, send_body)
                    return
                status, (start, end) = 206, parsed
            body = data[start:end]
            if fault.corrupt:
                body = bytes(b ^ 0xFF for b in body)
            headers = {"Content-Length": str(len(body)), "Accept-Ranges": "bytes"}
            if status == 206:
                headers["Content-Range"] = fault.content_range or f"bytes {start}-{end - 1}/{len(data)}"
            if fault.drop_after is not None:
                body = body[:fault.drop_after]
            self._reply(status, body, headers, send_body, content_length_set=True, pace=fault.pace)
            if fault.hang:
                state.stopping.wait(fault.hang)

        def _reply(self, status: int, body: bytes, headers: dict[str, str], send_body: bool,
                   content_length_set: bool = False, pace: float = 0.0) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            if not content_length_set:
                self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if send_body and body:
                piece = 64 << 10 if pace else max(len(body), 1)
                try:
                    for start in range(0, len(body), piece):
                        self.wfile.write(body[start:start + piece])
                        self.wfile.flush()
                        if pace and state.stopping.wait(pace):
                            break
                except (BrokenPipeError, ConnectionResetError):
                    pass
            self.close_connection = True

    return Handler


def _parse_range(header: str, length: int) -> tuple[int, int] | None:
    """(start, end-exclusive) for `bytes=N-` or `bytes=N-M`; None when unsatisfiable."""
    unit, _, spec = header.partition("=")
    first, _, last = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or not first.isdigit() or "," in spec:
        return None
    start = int(first)
    end = min(int(last) + 1, length) if last.strip().isdigit() else length
    if start >= length or end <= start:
        return None
    return start, end
