"""Small HTTP apps for the SDK tests, on real sockets (port 0)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class App:
    """A small HTTP app (like ``python -m http.server``) that names itself and records what it received."""

    def __init__(self, name: str, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.name = name
        self.requests: list[dict[str, str]] = []
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = -1  # one write per response: two small writes meet Nagle and a delayed ACK (40 ms)

            def do_GET(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                app.requests.append({k.lower(): v for k, v in self.headers.items()}
                                    | {":path": self.path, ":method": self.command})
                body = json.dumps({"app": app.name, "path": self.path}).encode()
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
