"""A real local HTTP receiver of webhook deliveries, for tests and benchmarks.

It records every POST (headers and raw body), answers with a status and body
the caller sets, and can go down and come back on the same port (a receiver
that is down refuses connections). ``notification_ids`` is what a receiver
deduplicating by ``X-Analytics-Notification-Id`` would see.
"""

from __future__ import annotations

import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from devtools.processes import spare_port

NOTIFICATION_ID_HEADER = "X-Analytics-Notification-Id"
CERTIFICATE_DAYS = 1


def self_signed_certificate(directory: Path, host: str) -> tuple[Path, Path]:
    """A certificate for ``host`` (its own issuer) and its key, made by the openssl command."""
    cert, key = directory / f"{host}.crt", directory / f"{host}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", str(CERTIFICATE_DAYS), "-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes


class WebhookReceiver:
    """Start with ``start()``; ``stop()`` takes it down (connections refused), ``start()`` again brings it back."""

    def __init__(self, port: int | None = None, tls: tuple[Path, Path] | None = None) -> None:
        self.port = port or spare_port()
        self.tls = tls  # (certificate, key): serve https
        self.status = 200
        self.answer = b"ok"
        self.delay_s = 0.0  # pause after recording a request, before answering (a slow or hanging receiver)
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.received.append(Received(dict(self.headers.items()), body))
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(len(receiver.answer)))
                self.end_headers()
                self.wfile.write(receiver.answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def notification_ids(self) -> list[str]:
        with self._lock:
            return [r.headers.get(NOTIFICATION_ID_HEADER, "") for r in self.received]
