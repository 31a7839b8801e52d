"""A tiny HTTP server that serves a directory and accepts PUT (as nginx with `dav_methods PUT;
create_full_put_path on;` does), run in a thread of the test process on 127.0.0.1: the cache
of pull mode's deployer tests. Every request is logged (method, path), so a test can tell what
was written and in what order."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class PutServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.root = root
        self.log: list[tuple[str, str]] = []
        self.log_lock = threading.Lock()
        self.refuse_put = False  # a test makes every PUT fail (403)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: PutServer
    # HTTP/1.1: keep-alive, and `Expect: 100-continue` answered at once (curl, under Nix, waits
    # a second for it before each PUT of an HTTP/1.0 server)
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return

    def _file(self) -> Path | None:
        path = unquote(urlsplit(self.path).path)
        target = (self.server.root / path.lstrip("/")).resolve()
        return target if target.is_relative_to(self.server.root.resolve()) else None

    def _note(self) -> None:
        with self.server.log_lock:
            self.server.log.append((self.command, urlsplit(self.path).path))

    def _send(self, code: int, body: bytes = b"", head: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_GET(self, head: bool = False) -> None:
        self._note()
        target = self._file()
        if target is None or not target.is_file():
            self._send(404, b"not found", head)
            return
        self._send(200, target.read_bytes(), head)

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_PUT(self) -> None:
        self._note()
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        target = self._file()
        if target is None or self.server.refuse_put:
            self._send(403, b"forbidden")
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{threading.get_ident()}")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        self._send(201)


@contextmanager
def serving(root: Path) -> Iterator[PutServer]:
    root.mkdir(parents=True, exist_ok=True)
    server = PutServer(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="put server")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
