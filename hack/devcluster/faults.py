"""Fault injection at an exact moment: a TCP link in front of MinIO that stops the server when a
chosen request passes through it.

Stopping MinIO "during the final publish" by timing alone is a race (a tiny adapter uploads in
milliseconds). The trainer and the operator's pods talk to the store through this link instead, so
a test can say "stop MinIO the moment the first adapter file is PUT, for 30 s" and know the outage
hit the upload. The server really stops (its process is terminated) and really restarts on the
same port and data; while it is down the link refuses nothing but forwards to nothing, so clients
see what they would see from a dead endpoint: connection resets.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field

from .controlplane import free_port
from .minio import MinioServer


@dataclass
class Outage:
    """One armed fault: when a request matches `pattern`, MinIO stops for `seconds`."""

    pattern: re.Pattern[bytes]
    seconds: float
    started: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    request: str = ""
    started_at: float = 0.0


@dataclass
class StoreLink:
    minio: MinioServer
    port: int = field(default_factory=free_port)
    outages: list[Outage] = field(default_factory=list)
    _server: socket.socket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://{self.minio.address}:{self.port}"

    def start(self) -> StoreLink:
        server = socket.create_server((self.minio.address, self.port))
        server.settimeout(0.5)
        self._server = server
        threading.Thread(target=self._accept, name="store-link", daemon=True).start()
        return self

    def stop(self) -> None:
        self._closed.set()
        if self._server is not None:
            self._server.close()

    def outage_on(self, pattern: str, seconds: float) -> Outage:
        """Arm a fault: the first request line matching `pattern` (e.g. r"PUT /[^ ]*/adapter/") stops MinIO."""
        outage = Outage(re.compile(pattern.encode()), seconds)
        with self._lock:
            self.outages.append(outage)
        return outage

    # --- the link ------------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._server is not None
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection((self.minio.address, self.minio.port), timeout=5)
        except OSError:
            client.close()  # MinIO is down: the client sees its connection dropped
            return
        upstream.settimeout(None)
        done = threading.Event()
        threading.Thread(target=self._pump, args=(upstream, client, done, False), daemon=True).start()
        self._pump(client, upstream, done, True)

    def _pump(self, source: socket.socket, sink: socket.socket, done: threading.Event, requests: bool) -> None:
        try:
            while not done.is_set():
                chunk = source.recv(65536)
                if not chunk:
                    break
                if requests and self._trips(chunk):
                    break  # drop this request on the floor: MinIO is going down
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            done.set()
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _trips(self, chunk: bytes) -> bool:
        with self._lock:
            outage = next((o for o in self.outages if not o.started.is_set() and o.pattern.search(chunk)), None)
            if outage is None:
                return False
            outage.request = chunk.split(b"\r\n", 1)[0].decode(errors="replace")
            outage.started_at = time.monotonic()
            self.minio.stop()
            outage.started.set()
        threading.Thread(target=self._restart_after, args=(outage,), daemon=True).start()
        return True

    def _restart_after(self, outage: Outage) -> None:
        time.sleep(outage.seconds)
        self.minio.start()
        outage.ended.set()
