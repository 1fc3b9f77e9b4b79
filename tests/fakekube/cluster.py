"""A fake cluster for end-to-end tests: the fake API server, the process kubelet that really
runs pods, the controllers around it (Job, JobSet, Deployment, ReplicaSet), and Service access
for the test (kube-proxy's part). Use the `cluster` fixture (fixtures.py) or:

    with FakeCluster(tmp_path / "cluster") as cluster:
        cluster.apply(manifest)
        cluster.wait(lambda: cluster.job_condition("default", "train") == "Complete")
        base_url = cluster.service_url("default", "serve")   # http://127.0.0.1:<port>

Timing knobs (constructor): `probe_scale` multiplies every probe delay and period (1.0 = as
written in the manifest), `crash_backoff` is the kubelet's CrashLoopBackOff base (the real
one is 10 s), `job_backoff` the Job controller's pod-recreation backoff base (real: 10 s).
The fixture uses short ones so tests stay fast; the semantics (what waits on what) are unchanged.
"""
from __future__ import annotations

import itertools
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from fakekube.controllers import DeploymentController, JobController, JobSetController, ReplicaSetController
from fakekube.netns import Relay, host_listener
from fakekube.process_kubelet import ProcessKubelet
from fakekube.server import ApiError, FakeKube, parse_label_selector


class ServiceProxy:
    """A stable 127.0.0.1 port per Service port; each connection goes to a ready endpoint of
    the Service (round robin), resolved when the connection arrives, as kube-proxy does. With no
    ready endpoint the connection is closed at once."""

    def __init__(self, cluster: "FakeCluster") -> None:
        self.cluster = cluster
        self._relays: dict[tuple[str, str, str], Relay] = {}
        self._rr = itertools.count()
        self._lock = threading.Lock()

    def endpoints(self, namespace: str, name: str, port: str | int | None = None) -> list[tuple[str, int]]:
        """(pod name, container port) of every ready pod behind the Service port."""
        fake = self.cluster.fake
        svc = fake.get("v1", "Service", namespace, name)
        spec = svc.get("spec") or {}
        ports = spec.get("ports") or []
        sp = next((p for p in ports if port in (None, p.get("name"), p.get("port"))), None)
        if sp is None:
            raise KeyError(f"service {namespace}/{name} has no port {port!r}")
        target = sp.get("targetPort", sp.get("port"))
        selector = spec.get("selector") or {}
        if not selector:
            return []
        match = parse_label_selector(",".join(f"{k}={v}" for k, v in selector.items()))
        out = []
        for pod in fake.list("v1", "Pod", namespace)["items"]:
            if not match(pod["metadata"].get("labels") or {}) or pod["metadata"].get("deletionTimestamp"):
                continue
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (pod.get("status") or {}).get("conditions") or [])
            if not ready and not spec.get("publishNotReadyAddresses"):
                continue
            number: int | None = None
            if isinstance(target, int) or str(target).isdigit():
                number = int(target)
            else:
                for c in (pod.get("spec") or {}).get("containers") or []:
                    for p in c.get("ports") or []:
                        if p.get("name") == target:
                            number = int(p["containerPort"])
            if number is not None:
                out.append((pod["metadata"]["name"], number))
        return out

    def address(self, namespace: str, name: str, port: str | int | None = None) -> tuple[str, int]:
        key = (namespace, name, str(port))
        with self._lock:
            relay = self._relays.get(key)
            if relay is None:
                def dial() -> socket.socket | None:
                    eps = self.endpoints(namespace, name, port)
                    if not eps:
                        return None
                    pod, number = eps[next(self._rr) % len(eps)]
                    w = self.cluster.kubelet.worker(namespace, pod)
                    if w.net is None:
                        return None
                    s = w.net.dial(number, timeout=5.0)
                    s.settimeout(None)
                    return s

                relay = self._relays[key] = Relay(host_listener(), dial, f"svc-{namespace}-{name}")
        return relay.address[0], relay.port

    def close(self) -> None:
        with self._lock:
            relays, self._relays = list(self._relays.values()), {}
        for r in relays:
            r.close()


class FakeCluster:
    def __init__(self, root: Path, *, namespaces: tuple[str, ...] = ("default",), probe_scale: float = 0.2,
                 crash_backoff: float = 0.5, job_backoff: float = 0.2, fake: FakeKube | None = None) -> None:
        self.root = Path(root)
        self._own_fake = fake is None
        self.fake = fake or FakeKube()
        self.namespaces = namespaces
        self.kubelet = ProcessKubelet(self.fake, self.root / "node", probe_scale=probe_scale, crash_backoff=crash_backoff)
        self.jobs = JobController(self.fake, backoff=job_backoff)
        self.jobsets = JobSetController(self.fake)
        self.replicasets = ReplicaSetController(self.fake)
        self.deployments = DeploymentController(self.fake)
        self.services = ServiceProxy(self)

    # -- lifecycle

    def start(self) -> "FakeCluster":
        if self._own_fake:
            self.fake.start()
        for ns in self.namespaces:
            self.fake.ensure_namespace(ns)
        self.kubelet.start()
        for c in (self.jobs, self.jobsets, self.replicasets, self.deployments):
            c.start()
        return self

    def stop(self) -> None:
        controllers = (self.deployments, self.replicasets, self.jobsets, self.jobs)
        for c in controllers:
            c._stop.set()
        for c in controllers:
            c.stop()
        self.services.close()
        self.kubelet.stop()
        if self._own_fake:
            self.fake.stop()

    def __enter__(self) -> "FakeCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- API access

    @property
    def url(self) -> str:
        return self.fake.url

    def kubeconfig(self, namespace: str = "default") -> str:
        return self.fake.kubeconfig(namespace)

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path.write_text(self.kubeconfig(namespace))
        return path

    def apply(self, *manifests: dict, namespace: str = "default") -> list[dict]:
        """Create each object (in order), as `kubectl create` would."""
        out = []
        for m in manifests:
            ns = (m.get("metadata") or {}).get("namespace") or namespace
            r = self.fake.resource_for(m["apiVersion"], m["kind"])
            out.append(self.fake.create(m, namespace=ns if r.namespaced else None))
        return out

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return self.fake.get(api_version, kind, namespace, name)
        except ApiError:
            return None

    def pods(self, namespace: str = "default", selector: str = "") -> list[dict]:
        return self.fake.list("v1", "Pod", namespace, selector)["items"]

    def events(self, namespace: str = "default", reason: str | None = None) -> list[dict]:
        return [e for e in self.fake.list("v1", "Event", namespace)["items"] if reason in (None, e.get("reason"))]

    def condition(self, api_version: str, kind: str, namespace: str, name: str, type_: str) -> dict | None:
        obj = self.get(api_version, kind, namespace, name)
        for c in ((obj or {}).get("status") or {}).get("conditions") or []:
            if c.get("type") == type_ and c.get("status") == "True":
                return c
        return None

    def wait(self, predicate: Callable[[], Any], timeout: float = 60, message: str = "") -> Any:
        """Wait (on store changes, and a short tick) until predicate() is truthy; its value."""
        deadline = time.monotonic() + timeout
        rv = 0
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
            rv = self.fake.wait_for_change(rv, 0.1)

    # -- kubelet and Service access

    def claim_dir(self, namespace: str, name: str) -> Path:
        return self.kubelet.claim_dir(namespace, name)

    def expose_host_port(self, port: int) -> None:
        self.kubelet.expose_host_port(port)

    def kill_pod(self, namespace: str, name: str) -> None:
        self.kubelet.kill_pod(namespace, name)

    def preempt(self, namespace: str, name: str) -> None:
        self.kubelet.preempt(namespace, name)

    def pod_address(self, namespace: str, name: str, port: int) -> tuple[str, int]:
        return self.kubelet.pod_address(namespace, name, port)

    def service_address(self, namespace: str, name: str, port: str | int | None = None) -> tuple[str, int]:
        """127.0.0.1:<port> that reaches a ready pod behind the Service (chosen per connection)."""
        return self.services.address(namespace, name, port)

    def service_url(self, namespace: str, name: str, port: str | int | None = None) -> str:
        host, p = self.service_address(namespace, name, port)
        return f"http://{host}:{p}"
