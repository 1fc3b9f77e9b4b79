"""Pod networks for the process kubelet: one network namespace per pod (per group of pods that
share a headless-Service subdomain, see process_kubelet.py), held by a pause process, and TCP
relays across namespaces.

Why namespaces: two pods of one Deployment both listen on their containerPort (8000), as they
would on two pod IPs; in one shared network the second would fail to bind. Each pod gets its own
loopback instead, and the kubelet carries traffic across:

* host -> pod: `NetNS.forward(port)` listens on 127.0.0.1:<free port> of this (the test's)
  network and connects each accepted connection to 127.0.0.1:<port> inside the pod, the way
  `kubectl port-forward` does; `ServiceProxy` does the same for a Service, choosing a ready
  endpoint per connection (kube-proxy without iptables).
* pod -> host: `NetNS.expose(port)` listens on 127.0.0.1:<port> inside the pod and connects to
  127.0.0.1:<port> here, so a pod reaches the fake API server or the S3 server at the same URL the
  test uses. Nothing else on the host is reachable from a pod.

A socket belongs to the network namespace it was created in, whichever thread uses it later, so
a short-lived thread that setns()es into the pod's namespace creates it and hands it back.
"""
from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

CLONE_NEWNET = 0x40000000
SANDBOX = str(Path(__file__).with_name("sandbox.py"))
_libc = ctypes.CDLL(None, use_errno=True)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class Relay:
    """Accepts on `listener`; each connection is joined to the socket `dial()` returns (None:
    nothing to connect to, the connection is closed at once)."""

    def __init__(self, listener: socket.socket, dial: Callable[[], socket.socket | None], name: str) -> None:
        self.listener = listener
        self.dial = dial
        self.address = listener.getsockname()[:2]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name=f"relay-{name}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.address[1])

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._join, args=(conn,), daemon=True).start()

    def _join(self, conn: socket.socket) -> None:
        try:
            upstream = self.dial()
        except OSError:
            upstream = None
        if upstream is None:
            conn.close()
            return
        with self._lock:
            if self._closed:
                conn.close()
                upstream.close()
                return
            self._conns.update((conn, upstream))
        back = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
        back.start()
        _pump(conn, upstream)
        back.join()
        with self._lock:
            self._conns.difference_update((conn, upstream))
        conn.close()
        upstream.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = list(self._conns)
        for s in [self.listener, *conns]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def host_listener(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s


def dial_host(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(None)
    return s


class NetNS:
    """A network namespace with loopback up, alive while its pause process runs."""

    def __init__(self, name: str, python: str = sys.executable) -> None:
        self.name = name
        self.proc = subprocess.Popen([python, "-I", "-S", SANDBOX, "pause"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.proc.kill()
            raise RuntimeError(f"the pause process of {name} did not start (exit {self.proc.wait()})")
        self.path = f"/proc/{self.proc.pid}/ns/net"
        self._fd = os.open(self.path, os.O_RDONLY)
        self._relays: dict[tuple[str, int], Relay] = {}
        self._lock = threading.Lock()

    def socket(self, family: int = socket.AF_INET) -> socket.socket:
        """A TCP socket that lives in this namespace."""
        out: list = []

        def make() -> None:
            try:
                if _libc.setns(self._fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {self.name}")
                out.append(socket.socket(family, socket.SOCK_STREAM))
            except OSError as exc:
                out.append(exc)

        t = threading.Thread(target=make, name=f"setns-{self.name}", daemon=True)
        t.start()
        t.join()
        if isinstance(out[0], OSError):
            raise out[0]
        return out[0]

    def dial(self, port: int, timeout: float = 1.0) -> socket.socket:
        """Connect to 127.0.0.1:<port> inside the namespace."""
        s = self.socket()
        s.settimeout(timeout)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            s.close()
            raise
        return s

    def forward(self, port: int) -> int:
        """A port on this host's 127.0.0.1 that reaches 127.0.0.1:<port> in the namespace."""
        with self._lock:
            relay = self._relays.get(("in", port))
            if relay is None:
                def dial() -> socket.socket:
                    s = self.dial(port, timeout=5.0)
                    s.settimeout(None)
                    return s

                relay = self._relays[("in", port)] = Relay(host_listener(), dial, f"{self.name}-{port}")
            return relay.port

    def expose(self, port: int) -> None:
        """Make 127.0.0.1:<port> of this host reachable at 127.0.0.1:<port> inside."""
        with self._lock:
            if ("out", port) in self._relays:
                return
            s = self.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(64)
            self._relays[("out", port)] = Relay(s, lambda: dial_host(port), f"{self.name}-host-{port}")

    def close(self) -> None:
        with self._lock:
            relays, self._relays = list(self._relays.values()), {}
        for r in relays:
            r.close()
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        try:
            os.close(self._fd)
        except OSError:
            pass
