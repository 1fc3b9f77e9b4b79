"""A kubelet (plus the scheduler's binding and a volume provisioner) that really runs the pods the
fake API server holds, as local processes. It watches the server in-process and writes Pod
status, Events and PVC status through the store, like the real components do over the API.

What a pod gets (see README.md for the whole contract and its gaps):

* **Scheduling**: a pod is bound to the one node (`spec.nodeName`) once every claim it names
  exists; until then it stays Pending with PodScheduled=False/Unschedulable and a
  FailedScheduling event naming the claim. PVCs become Bound at once, each with its own
  directory (`claim_dir(namespace, name)`).
* **Containers**: init containers in order, then all containers, each a process started by
  sandbox.py in its own mount and UTS namespace, in the pod's network namespace (netns.py), with a
  root of its own (an overlay of the host's `/`), the volumes bind-mounted at their mountPaths and
  `/` read-only under readOnlyRootFilesystem. Images are not pulled: every image is the host
  itself, whose PATH starts with this interpreter's bin directory (the project's .venv), so
  `python`, `ftops`, `dvc`, `torchrun` resolve to the venv's. The image name is only recorded.
* **Env**: literal values with $(VAR) expansion, secretKeyRef, configMapKeyRef, fieldRef
  (metadata.name/namespace/uid/labels/annotations, spec.nodeName/serviceAccountName,
  status.podIP/hostIP), resourceFieldRef, envFrom; a missing object or key is
  CreateContainerConfigError, retried.
* **Volumes**: persistentVolumeClaim (the claim's directory; `readOnly`), emptyDir (a directory
  per pod; `medium: Memory` is a directory too, recorded), configMap / secret / downwardAPI /
  projected as files (items, keys, modes), subPath; hostPath and anything else is refused with
  a FailedMount event and the pod stays ContainerCreating.
* **Users**: runAsUser/runAsGroup/fsGroup/supplementalGroups are honoured (fsGroup owns emptyDir
  and claim directories, setgid, group-writable, as the kubelet's volume ownership does);
  runAsNonRoot without a non-zero runAsUser is CreateContainerConfigError; capabilities drop ALL
  and allowPrivilegeEscalation=false are applied (bounding set, no_new_privs).
* **Status**: phase, conditions (PodScheduled, PodReadyToStartContainers, Initialized,
  ContainersReady, Ready), initContainerStatuses/containerStatuses with waiting / running /
  terminated (exitCode, reason Completed / Error / StartError, 128+N for a signal), lastState,
  restartCount, started, ready. restartPolicy Always/OnFailure restarts with CrashLoopBackOff.
* **Probes**: httpGet, tcpSocket and exec startup/readiness/liveness probes, polled for real
  inside the pod's network; Ready only while readiness passes; liveness failure restarts.
* **Logs**: stdout+stderr of each run in a file, served by the API server's /log endpoint
  (container, previous, tailLines, limitBytes, follow).
* **Termination**: a pod with a deletionTimestamp (the API server sets one on a graceful delete)
  gets SIGTERM to each container's process group, the grace period, then SIGKILL; then its final
  status (Failed/Succeeded from the exit codes) and the kubelet's grace-0 delete. A pod removed
  from the store behind the kubelet's back is killed the same way.
* **Faults**: `kill_pod(ns, name)` SIGKILLs every process of a pod (a lost node / worker);
  `preempt(ns, name)` adds DisruptionTarget (PreemptionByScheduler) and deletes the pod
  gracefully, as the scheduler does.

Resources (requests/limits, GPUs included) are recorded, not enforced: a GPU pod runs on the CPU.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from fakekube.netns import SANDBOX, NetNS, Relay
from fakekube.server import ApiError, FakeKube, LogResult

NODE_NAME = "fakekube-node"
TERMINAL = ("Succeeded", "Failed")
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: a defined variable is replaced, an undefined one is kept,
    $$ is a literal $."""
    return _VAR.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def parse_quantity(q: Any) -> float:
    text = str(q)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    if not m:
        raise ValueError(f"bad quantity {q!r}")
    return float(m.group(1)) * units.get(m.group(2), 1)


def _descendants(root: int) -> list[int]:
    """Every live descendant of `root` (from /proc's parent links), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])  # after "pid (comm) state"
        children.setdefault(ppid, []).append(int(entry))
    out, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(0), []):
            out.append(child)
            queue.append(child)
    return out


class ConfigError(Exception):
    """CreateContainerConfigError: an env reference that cannot be resolved (yet)."""


class MountError(Exception):
    """FailedMount: a volume that cannot be set up (yet)."""


class ContainerRun:
    """One start of one container: its process, log file and how it ended."""

    def __init__(self, name: str, restart: int, log_path: Path) -> None:
        self.name, self.restart, self.log_path = name, restart, log_path
        self.proc: subprocess.Popen | None = None
        self.started_at: str | None = None
        self.finished_at: str | None = None
        self.exit_code: int | None = None
        self.reason = ""
        self.message = ""
        self.done = threading.Event()
        self.started_mono = time.monotonic()
        self.kill_deadline: float | None = None

    @property
    def running(self) -> bool:
        return self.started_at is not None and not self.done.is_set()

    def signal(self, sig: int) -> None:
        """SIGTERM goes to the container's process group. SIGKILL reaches every process of the
        container, as a runtime's kill of the container's cgroup does: its process group and every
        descendant, including those in sessions of their own (torchrun starts each worker with
        setsid, so a process-group kill alone would leave the workers training)."""
        if self.proc is None or self.done.is_set():
            return
        pids = _descendants(self.proc.pid) if sig == signal.SIGKILL else []
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def terminated(self, container_id: str) -> dict:
        t = {"exitCode": self.exit_code, "reason": self.reason, "startedAt": self.started_at or self.finished_at,
             "finishedAt": self.finished_at, "containerID": container_id}
        if self.message:
            t["message"] = self.message
        return t


class Prober(threading.Thread):
    """One probe of one container run, polled for real at the probe's period."""

    def __init__(self, kubelet: "ProcessKubelet", worker: "PodWorker", container: dict, run: ContainerRun,
                 kind: str, probe: dict) -> None:
        super().__init__(name=f"probe-{kind}-{worker.name}-{container['name']}", daemon=True)
        self.kubelet, self.worker, self.container, self.run_, self.kind, self.probe = kubelet, worker, container, run, kind, probe
        self.stop = threading.Event()
        self.passing = False
        self.failed = False  # failureThreshold reached (startup / liveness: the container is killed)

    def _port(self, port: Any) -> int:
        if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
            return int(port)
        for p in self.container.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"port {port!r} is not a named port of container {self.container['name']}")

    def once(self) -> bool:
        timeout = float(self.probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in self.probe:
                g = self.probe["httpGet"]
                port = self._port(g.get("port"))
                sock = self.worker.net.dial(port, timeout)
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                conn.sock = sock
                headers = {"Host": f"127.0.0.1:{port}", "User-Agent": "kube-probe/1.30"}
                headers.update({h["name"]: h["value"] for h in g.get("httpHeaders") or []})
                conn.request("GET", g.get("path") or "/", headers=headers)
                status = conn.getresponse().status
                conn.close()
                return 200 <= status < 400
            if "tcpSocket" in self.probe:
                self.worker.net.dial(self._port(self.probe["tcpSocket"].get("port")), timeout).close()
                return True
            if "exec" in self.probe:
                return self.kubelet.exec_in(self.worker, self.container["name"], self.probe["exec"]["command"],
                                            timeout=timeout).returncode == 0
        except (OSError, ValueError, http.client.HTTPException, subprocess.TimeoutExpired):
            return False
        return False

    def run(self) -> None:
        scale = self.kubelet.probe_scale
        if self.kind != "startup":
            while not self.stop.is_set() and not self.worker.started.get(self.container["name"]):
                self.stop.wait(0.05)
        if self.stop.wait(float(self.probe.get("initialDelaySeconds", 0)) * scale):
            return
        period = float(self.probe.get("periodSeconds", 10)) * scale
        success_needed = int(self.probe.get("successThreshold", 1))
        failure_limit = int(self.probe.get("failureThreshold", 3))
        ok = bad = 0
        while not self.stop.is_set() and not self.run_.done.is_set():
            if self.once():
                ok, bad = ok + 1, 0
                if ok >= success_needed and not self.passing:
                    self.passing = True
                    self.kubelet.wake()
                    if self.kind == "startup":
                        return
            else:
                ok, bad = 0, bad + 1
                if bad >= failure_limit:
                    if self.passing or self.kind in ("startup", "liveness"):
                        self.passing = False
                        if self.kind in ("startup", "liveness"):
                            self.failed = True
                        self.kubelet.wake()
                        if self.failed:
                            return
            self.stop.wait(period)


class PodWorker:
    """The kubelet's state for one pod (by uid)."""

    def __init__(self, kubelet: "ProcessKubelet", pod: dict) -> None:
        meta = pod["metadata"]
        self.kubelet = kubelet
        self.pod = pod
        self.uid, self.namespace, self.name = meta["uid"], meta["namespace"], meta["name"]
        self.dir = kubelet.root / "pods" / self.uid
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        spec = pod.get("spec") or {}
        self.hostname = (spec.get("hostname") or self.name)[:63]
        self.subdomain = spec.get("subdomain") or ""
        self.group = (self.namespace, self.subdomain) if self.subdomain else ("pod", self.uid)
        self.net: NetNS | None = None
        self.volumes: dict[str, tuple[Path, bool]] | None = None  # name -> (dir, always read-only)
        self.runs: dict[str, list[ContainerRun]] = {}
        self.waiting: dict[str, tuple[str, str]] = {}
        self.next_start: dict[str, float] = {}
        self.started: dict[str, bool] = {}
        self.probers: dict[str, list[Prober]] = {}
        self.init_done = False
        self.phase = "Pending"
        self.start_time = now_iso()
        self.terminating = False
        self.final_written = False
        self.last_status: dict | None = None
        self.events: set[tuple[str, str]] = set()
        self.next_volume_try = 0.0

    # -- containers of the pod

    @property
    def spec(self) -> dict:
        return self.pod.get("spec") or {}

    def init_containers(self) -> list[dict]:
        return list(self.spec.get("initContainers") or [])

    def containers(self) -> list[dict]:
        return list(self.spec.get("containers") or [])

    def current(self, name: str) -> ContainerRun | None:
        runs = self.runs.get(name) or []
        return runs[-1] if runs else None

    def all_runs(self) -> Iterator[ContainerRun]:
        for runs in self.runs.values():
            yield from runs

    def alive(self) -> list[ContainerRun]:
        return [r for r in self.all_runs() if r.proc is not None and not r.done.is_set()]

    def container_id(self, run: ContainerRun) -> str:
        return f"fakekube://{self.uid[:8]}-{run.name}-{run.restart}"


def _image_dirs(python_bin: Path) -> list[str]:
    """The interpreter's and the venv's prefixes and the folder the `controller` package is
    imported from (an editable install points into the checkout), outermost first."""
    import importlib.util

    dirs = {str(Path(sys.prefix).resolve()), str(Path(sys.base_prefix).resolve()), str(python_bin.resolve().parent)}
    found = importlib.util.find_spec("controller")
    if found and found.submodule_search_locations:
        dirs.add(str(Path(list(found.submodule_search_locations)[0]).resolve().parent))
    return sorted(dirs, key=lambda d: d.count("/"))


class ProcessKubelet:
    """Runs the pods of a FakeKube. start()/stop(), or use it as a context manager."""

    def __init__(self, fake: FakeKube, root: Path, *, node_name: str = NODE_NAME, python_bin: Path | None = None,
                 host_ports: tuple[int, ...] = (), probe_scale: float = 1.0, crash_backoff: float = 10.0,
                 resync: float = 0.1) -> None:
        self.fake = fake
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self.node_name = node_name
        self.python_bin = Path(python_bin or Path(sys.executable).parent)
        self.image_path = f"{self.python_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        self.image_dirs = _image_dirs(self.python_bin)
        self.images: dict[str, list[str]] = {}
        """image name -> host directories put first on its containers' PATH (and kept visible, like
        image_dirs): what that image has that the host's does not (a test's stand-in executable)."""
        self.pod_ips: dict[str, str] = {}
        """pod uid -> the address it has behind headless Services (fd00:f4ce::N), while it runs."""
        self._svc_relays: dict[tuple[tuple[str, str], str, int], tuple[Relay, str]] = {}
        self._net_addrs: dict[tuple[str, str], set[str]] = {}
        self._next_ip = 0
        """Host directories that make up the "image" (the interpreter, the venv, the project an
        editable install points at). A pod volume mounted over a parent of one (an emptyDir at
        /tmp while the checkout lives under /tmp) must not hide it: a real image's files are
        never under the pod's volumes, so the sandbox binds these back, read-only, on top."""
        self.probe_scale = probe_scale
        self.crash_backoff = crash_backoff
        self.resync = resync
        self.workers: dict[str, PodWorker] = {}
        self.nets: dict[tuple[str, str], tuple[NetNS, set[str]]] = {}
        self.host_ports: set[int] = set(host_ports)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._unschedulable: dict[str, str] = {}
        self._spawn_q: list[tuple[Callable[[], Any], list, threading.Event]] = []

    # -- lifecycle

    def start(self) -> "ProcessKubelet":
        port = int(self.fake.url.rsplit(":", 1)[1])
        self.host_ports.add(port)  # pods reach the API server at the URL the test uses
        self.fake.log_source = self.log_result
        self.fake.proxy_source = self.proxy_get
        for target, name in ((self._loop, "kubelet"), (self._watch, "kubelet-watch")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.fake.notify()
        for t in self._threads:
            t.join(10)
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:
            for run in w.alive():
                run.signal(signal.SIGKILL)
            for probers in w.probers.values():
                for p in probers:
                    p.stop.set()
        for w in workers:
            for run in w.all_runs():
                run.done.wait(5)
        for net, _ in list(self.nets.values()):
            net.close()
        self.nets.clear()
        if self.fake.log_source == self.log_result:
            self.fake.log_source = None
        if self.fake.proxy_source == self.proxy_get:
            self.fake.proxy_source = None

    def __enter__(self) -> "ProcessKubelet":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def wake(self) -> None:
        self._wake.set()

    def _watch(self) -> None:
        rv = 0
        while not self._stop.is_set():
            new = self.fake.wait_for_change(rv, 0.5)
            if new != rv:
                rv = new
                self._wake.set()

    def _loop(self) -> None:
        # Every process is started from this one long-lived thread: the sandbox asks for
        # PR_SET_PDEATHSIG, which fires when the thread that forked it ends.
        while not self._stop.is_set():
            self._wake.wait(self.resync)
            self._wake.clear()
            try:
                self.sync()
            except Exception as exc:  # a kubelet keeps going; the test sees the effect
                sys.stderr.write(f"fakekube kubelet: sync failed: {type(exc).__name__}: {exc}\n")
                import traceback

                traceback.print_exc()

    # -- public helpers for tests

    def expose_host_port(self, port: int) -> None:
        """Let pods reach 127.0.0.1:<port> of the test (an S3 server, say) at the same address."""
        with self._lock:
            self.host_ports.add(port)
            nets = [n for n, _ in self.nets.values()]
        for net in nets:
            net.expose(port)

    def claim_dir(self, namespace: str, name: str) -> Path:
        """The directory behind a PVC (it exists once the PVC does)."""
        pvc = self.fake.get("v1", "PersistentVolumeClaim", namespace, name)
        return self.root / "claims" / namespace / f"{name}-{pvc['metadata']['uid'][:8]}"

    def worker(self, namespace: str, name: str) -> PodWorker:
        with self._lock:
            for w in self.workers.values():
                if w.namespace == namespace and w.name == name:
                    return w
        raise KeyError(f"pod {namespace}/{name} is not running on this kubelet")

    def pod_address(self, namespace: str, name: str, port: int) -> tuple[str, int]:
        """127.0.0.1:<p> on this host that reaches <port> inside the pod (kubectl port-forward)."""
        w = self.worker(namespace, name)
        if w.net is None:
            raise KeyError(f"pod {namespace}/{name} has no network yet")
        return "127.0.0.1", w.net.forward(port)

    def proxy_get(self, namespace: str, name: str, port: int, path: str) -> tuple[int, str, bytes]:
        """GET `path` from <port> inside the pod's network (the API server's pods/proxy)."""
        try:
            w = self.worker(namespace, name)
        except KeyError:
            return 503, "text/plain", f"pod {namespace}/{name} is not running".encode()
        if w.net is None:
            return 503, "text/plain", f"pod {namespace}/{name} has no network yet".encode()
        try:
            sock = w.net.dial(port, timeout=5.0)
        except OSError as exc:
            return 503, "text/plain", f"error trying to reach service: dial tcp {port}: {exc}".encode()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.sock = sock
        try:
            conn.request("GET", path, headers={"Host": f"{name}:{port}"})
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type") or "text/plain", resp.read()
        except (OSError, http.client.HTTPException) as exc:
            return 503, "text/plain", f"error trying to reach service: {exc}".encode()
        finally:
            conn.close()

    def pids(self, namespace: str, name: str) -> dict[str, int]:
        w = self.worker(namespace, name)
        return {r.name: r.proc.pid for r in w.alive() if r.proc is not None}

    def kill_pod(self, namespace: str, name: str, sig: int = signal.SIGKILL) -> None:
        """A lost node: every process of the pod dies at once (SIGKILL), nothing is told first."""
        for run in self.worker(namespace, name).alive():
            run.signal(sig)

    def preempt(self, namespace: str, name: str, message: str = "Preempted in order to admit critical pod") -> None:
        """What the scheduler does to a victim: DisruptionTarget, then a graceful delete (SIGTERM)."""
        self.fake.patch_status("v1", "Pod", namespace, name, {"conditions": [{
            "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
            "message": message, "lastTransitionTime": now_iso()}]}, manager="kube-scheduler", strategic=True)
        self.fake.delete("v1", "Pod", namespace, name)

    def exec(self, namespace: str, name: str, container: str, command: list[str],
             timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a command inside a running container (kubectl exec)."""
        return self.exec_in(self.worker(namespace, name), container, command, timeout)

    def exec_in(self, w: PodWorker, container: str, command: list[str], timeout: float) -> subprocess.CompletedProcess:
        run = w.current(container)
        if run is None or not run.running or run.proc is None:
            raise KeyError(f"container {container} of pod {w.namespace}/{w.name} is not running")
        pid = str(run.proc.pid)
        return subprocess.run(["nsenter", "-t", pid, "-m", "-u", "-n", "-r", "-w", "--", *command],
                              capture_output=True, text=True, timeout=timeout)

    # -- the sync loop

    def sync(self) -> None:
        fake = self.fake
        pvcs = fake.list("v1", "PersistentVolumeClaim")["items"]
        self._provision(pvcs)
        pods = fake.list("v1", "Pod")["items"]
        claims = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pvcs}
        seen: set[str] = set()
        for pod in pods:
            meta, spec = pod["metadata"], pod.get("spec") or {}
            if not spec.get("nodeName"):
                if not meta.get("deletionTimestamp"):
                    self._schedule(pod, claims)
                continue
            if spec["nodeName"] != self.node_name:
                continue
            seen.add(meta["uid"])
            with self._lock:
                w = self.workers.get(meta["uid"])
                if w is None:
                    if (pod.get("status") or {}).get("phase") in TERMINAL:
                        continue  # finished before this kubelet started
                    w = self.workers[meta["uid"]] = PodWorker(self, pod)
            w.pod = pod
            self._sync_pod(w, gone=False)
        with self._lock:
            orphans = [w for uid, w in self.workers.items() if uid not in seen]
        for w in orphans:
            self._sync_pod(w, gone=True)
        self._sync_hosts()

    def _provision(self, pvcs: list[dict]) -> None:
        live = set()
        for pvc in pvcs:
            meta = pvc["metadata"]
            d = self.root / "claims" / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"
            live.add(d)
            if (pvc.get("status") or {}).get("phase") != "Bound":
                d.mkdir(parents=True, exist_ok=True)
                os.chmod(d, 0o755)
                spec = pvc.get("spec") or {}
                self.fake.patch_status("v1", "PersistentVolumeClaim", meta["namespace"], meta["name"], {
                    "phase": "Bound", "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "capacity": {"storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")}},
                    manager="kube-controller-manager")
        base = self.root / "claims"
        if base.exists():
            in_use = {str(p) for w in list(self.workers.values()) for p, _ in (w.volumes or {}).values()}
            for ns_dir in base.iterdir():
                for d in ns_dir.iterdir():
                    if d not in live and not any(u == str(d) or u.startswith(str(d) + "/") for u in in_use):
                        shutil.rmtree(d, ignore_errors=True)  # reclaimPolicy Delete

    def _schedule(self, pod: dict, claims: set[tuple[str, str]]) -> None:
        meta = pod["metadata"]
        missing = [v["persistentVolumeClaim"]["claimName"] for v in (pod.get("spec") or {}).get("volumes") or []
                   if "persistentVolumeClaim" in v and (meta["namespace"], v["persistentVolumeClaim"]["claimName"]) not in claims]
        if missing:
            message = (f'0/1 nodes are available: persistentvolumeclaim "{missing[0]}" not found. '
                       "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.")
            if self._unschedulable.get(meta["uid"]) != message:
                self._unschedulable[meta["uid"]] = message
                self._event(pod, "Warning", "FailedScheduling", message, component="default-scheduler")
                self._patch_pod_status(meta["namespace"], meta["name"], {"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                     "lastProbeTime": None, "lastTransitionTime": now_iso()}]})
            return
        self._unschedulable.pop(meta["uid"], None)
        try:
            r = self.fake.resource_for("v1", "Pod")
            self.fake._patch(r, meta["namespace"], meta["name"], "application/merge-patch+json",
                             {"spec": {"nodeName": self.node_name}}, "kube-scheduler")
        except ApiError:
            return
        self._event(pod, "Normal", "Scheduled", f"Successfully assigned {meta['namespace']}/{meta['name']} to {self.node_name}",
                    component="default-scheduler")

    # -- one pod

    def _sync_pod(self, w: PodWorker, gone: bool) -> None:
        meta = w.pod["metadata"]
        if gone or meta.get("deletionTimestamp"):
            grace = int(meta.get("deletionGracePeriodSeconds") or w.spec.get("terminationGracePeriodSeconds", 30))
            self._terminate(w, grace)
            if w.alive():
                self._kill_overdue(w)
                self._write_status(w)
                return
            if not gone:
                self._finish(w)
                self._write_status(w)
                try:
                    self.fake.delete("v1", "Pod", w.namespace, w.name, grace_period=0)
                except ApiError:
                    pass
                # with a finalizer (the Job controller's) the object stays until it is removed
                try:
                    self.fake.get("v1", "Pod", w.namespace, w.name)
                    return
                except ApiError:
                    pass
            self._cleanup(w)
            return
        if w.phase in TERMINAL:
            self._release_net(w)
            return
        if w.net is None:
            self._attach_net(w)
        if w.volumes is None:
            if time.monotonic() < w.next_volume_try:
                return
            try:
                w.volumes = self._setup_volumes(w)
            except MountError as exc:
                w.next_volume_try = time.monotonic() + 1.0
                self._event(w.pod, "Warning", "FailedMount", str(exc))
                for c in w.init_containers() + w.containers():
                    w.waiting[c["name"]] = ("PodInitializing" if w.init_containers() and c in w.containers() else
                                            "ContainerCreating", "")
                self._write_status(w)
                return
        policy = w.spec.get("restartPolicy", "Always")
        if not w.init_done:
            for c in w.init_containers():
                run = w.current(c["name"])
                if run is not None and run.done.is_set() and run.exit_code == 0:
                    continue
                if run is None:
                    self._maybe_start(w, c)
                elif run.done.is_set():
                    if policy == "Never":
                        w.phase = "Failed"
                    else:
                        self._maybe_start(w, c, restart=True)
                break
            else:
                w.init_done = True
        if w.init_done and w.phase not in TERMINAL:
            finished = True
            for c in w.containers():
                run = w.current(c["name"])
                if run is None:
                    self._maybe_start(w, c)
                    finished = False
                    continue
                self._check_probes(w, c, run)
                if not run.done.is_set():
                    finished = False
                    continue
                self._stop_probes(w, c["name"])
                if policy == "Always" or (policy == "OnFailure" and run.exit_code != 0):
                    self._maybe_start(w, c, restart=True)
                    finished = False
            if finished:
                codes = [w.current(c["name"]).exit_code for c in w.containers()]  # type: ignore[union-attr]
                w.phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"
            elif any(r.running for r in (w.current(c["name"]) for c in w.containers()) if r):
                w.phase = "Running"
        self._kill_overdue(w)
        self._write_status(w)
        if w.phase in TERMINAL:
            self._release_net(w)

    def _maybe_start(self, w: PodWorker, c: dict, restart: bool = False) -> None:
        name = c["name"]
        now = time.monotonic()
        prev = w.current(name)
        if restart and prev is not None:
            if name not in w.next_start:
                n = len(w.runs.get(name, []))  # starts so far: the first restart is at once, then 1x, 2x, 4x...
                ran = now - prev.started_mono
                delay = 0.0 if ran > 600 or n < 2 else min(self.crash_backoff * 2 ** (n - 2), 300.0)
                w.next_start[name] = now + delay
                if delay:
                    w.waiting[name] = ("CrashLoopBackOff", f"back-off {delay:g}s restarting failed container={name} "
                                                           f"pod={w.name}_{w.namespace}({w.uid})")
                    self._event(w.pod, "Warning", "BackOff", f"Back-off restarting failed container {name} in pod {w.name}")
            if now < w.next_start[name]:
                return
        elif name in w.next_start and now < w.next_start[name]:
            return
        w.next_start.pop(name, None)
        try:
            self._launch(w, c)
            w.waiting.pop(name, None)
        except ConfigError as exc:
            w.waiting[name] = ("CreateContainerConfigError", str(exc))
            w.next_start[name] = now + 1.0
            self._event(w.pod, "Warning", "Failed", f"Error: {exc}")

    # -- env, volumes, launch

    def _get(self, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return self.fake.get("v1", kind, namespace, name)
        except ApiError:
            return None

    def _source_value(self, w: PodWorker, kind: str, ref: dict) -> str | None:
        obj = self._get(kind, w.namespace, ref.get("name", ""))
        label = "secret" if kind == "Secret" else "configmap"
        if obj is None:
            if ref.get("optional"):
                return None
            raise ConfigError(f'{label} "{ref.get("name")}" not found')
        data = dict(obj.get("data") or {})
        if kind == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
        if ref["key"] not in data:
            if ref.get("optional"):
                return None
            raise ConfigError(f"couldn't find key {ref['key']} in {kind} {w.namespace}/{ref.get('name')}")
        return data[ref["key"]]

    def _field(self, w: PodWorker, path: str) -> str:
        meta = w.pod["metadata"]
        simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
                  "spec.nodeName": self.node_name, "spec.serviceAccountName": w.spec.get("serviceAccountName", "default"),
                  "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1", "status.podIPs": "127.0.0.1"}
        if path in simple:
            return simple[path]
        m = _FIELD.match(path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        raise ConfigError(f"unsupported fieldRef fieldPath {path!r}")

    def _resource_field(self, c: dict, ref: dict) -> str:
        where, _, what = ref["resource"].partition(".")
        value = ((c.get("resources") or {}).get(where) or {}).get(what)
        if value is None:
            value = {"cpu": "16", "memory": str(24 * 2**30), "ephemeral-storage": str(50 * 2**30)}.get(what, "0")
        divisor = parse_quantity(ref.get("divisor", "1"))
        return str(max(1, int(-(-parse_quantity(value) // divisor)))) if what == "cpu" else str(int(parse_quantity(value) // divisor))

    def _env(self, w: PodWorker, c: dict) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key not in src:
                    continue
                ref = src[key]
                obj = self._get(kind, w.namespace, ref.get("name", ""))
                if obj is None:
                    if ref.get("optional"):
                        continue
                    raise ConfigError(f'{"secret" if kind == "Secret" else "configmap"} "{ref.get("name")}" not found')
                data = obj.get("data") or {}
                for k, v in data.items():
                    env[prefix + k] = base64.b64decode(v).decode() if kind == "Secret" else v
        for e in c.get("env") or []:
            name = e["name"]
            if "valueFrom" in e:
                vf = e["valueFrom"]
                if "secretKeyRef" in vf:
                    value = self._source_value(w, "Secret", vf["secretKeyRef"])
                elif "configMapKeyRef" in vf:
                    value = self._source_value(w, "ConfigMap", vf["configMapKeyRef"])
                elif "fieldRef" in vf:
                    value = self._field(w, vf["fieldRef"]["fieldPath"])
                elif "resourceFieldRef" in vf:
                    value = self._resource_field(c, vf["resourceFieldRef"])
                else:
                    raise ConfigError(f"env {name}: unsupported valueFrom {sorted(vf)}")
                if value is None:
                    continue
                env[name] = value
            else:
                env[name] = expand(str(e.get("value", "")), env)
        return env

    def _ownership(self, path: Path, gid: int | None) -> None:
        if gid is None:
            return
        for dirpath, dirnames, filenames in os.walk(path):
            for n in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
                try:
                    os.chown(n, -1, gid, follow_symlinks=False)
                    st = os.lstat(n)
                    mode = (st.st_mode & 0o7777) | 0o060
                    if os.path.isdir(n):
                        mode |= 0o2010
                    os.chmod(n, mode)
                except OSError:
                    pass

    def _write_files(self, target: Path, files: dict[str, tuple[bytes, int]]) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for rel, (data, mode) in files.items():
            p = target / rel
            if ".." in Path(rel).parts or rel.startswith("/"):
                raise MountError(f"volume path {rel!r} must be relative without '..'")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            os.chmod(p, mode)

    def _object_files(self, w: PodWorker, kind: str, name: str, items: list | None, default_mode: int,
                      optional: bool) -> dict[str, tuple[bytes, int]]:
        obj = self._get(kind, w.namespace, name)
        label = "secret" if kind == "Secret" else "configmap"
        if obj is None:
            if optional:
                return {}
            raise MountError(f'MountVolume.SetUp failed for volume "{name}" : {label} "{name}" not found')
        data: dict[str, bytes] = {}
        for k, v in (obj.get("data") or {}).items():
            data[k] = base64.b64decode(v) if kind == "Secret" else str(v).encode()
        for k, v in (obj.get("binaryData") or {}).items():
            data[k] = base64.b64decode(v)
        if items:
            out = {}
            for it in items:
                if it["key"] not in data:
                    if optional:
                        continue
                    raise MountError(f'MountVolume.SetUp failed: configmap/secret "{name}" has no key {it["key"]!r}')
                out[it["path"]] = (data[it["key"]], int(it.get("mode", default_mode)))
            return out
        return {k: (v, default_mode) for k, v in data.items()}

    def _downward_files(self, w: PodWorker, items: list, default_mode: int) -> dict[str, tuple[bytes, int]]:
        out = {}
        for it in items:
            if "fieldRef" in it:
                path = it["fieldRef"]["fieldPath"]
                if path in ("metadata.labels", "metadata.annotations"):
                    d = w.pod["metadata"].get(path.split(".")[1]) or {}
                    value = "\n".join(f'{k}="{v}"' for k, v in sorted(d.items()))
                else:
                    try:
                        value = self._field(w, path)
                    except ConfigError as exc:
                        raise MountError(str(exc)) from None
            else:
                c = next((c for c in w.containers() if c["name"] == it["resourceFieldRef"].get("containerName")), {})
                value = self._resource_field(c, it["resourceFieldRef"])
            out[it["path"]] = (value.encode(), int(it.get("mode", default_mode)))
        return out

    def _setup_volumes(self, w: PodWorker) -> dict[str, tuple[Path, bool]]:
        sc = w.spec.get("securityContext") or {}
        fs_group = sc.get("fsGroup")
        out: dict[str, tuple[Path, bool]] = {}
        for v in w.spec.get("volumes") or []:
            name = v["name"]
            vdir = w.dir / "volumes" / name
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                pvc = self._get("PersistentVolumeClaim", w.namespace, claim)
                if pvc is None:
                    raise MountError(f'MountVolume.SetUp failed for volume "{name}" : persistentvolumeclaim "{claim}" not found')
                d = self.root / "claims" / w.namespace / f"{claim}-{pvc['metadata']['uid'][:8]}"
                d.mkdir(parents=True, exist_ok=True)
                self._ownership(d, fs_group)
                out[name] = (d, bool(v["persistentVolumeClaim"].get("readOnly")))
            elif "emptyDir" in v:
                vdir.mkdir(parents=True, exist_ok=True)
                os.chmod(vdir, 0o777)
                self._ownership(vdir, fs_group)
                out[name] = (vdir, False)
            elif "configMap" in v or "secret" in v:
                kind, src = ("ConfigMap", v["configMap"]) if "configMap" in v else ("Secret", v["secret"])
                obj_name = src.get("name") if kind == "ConfigMap" else src.get("secretName")
                files = self._object_files(w, kind, obj_name or "", src.get("items"), int(src.get("defaultMode", 0o644)),
                                           bool(src.get("optional")))
                self._write_files(vdir, files)
                self._ownership(vdir, fs_group)
                out[name] = (vdir, True)
            elif "downwardAPI" in v:
                src = v["downwardAPI"]
                self._write_files(vdir, self._downward_files(w, src.get("items") or [], int(src.get("defaultMode", 0o644))))
                out[name] = (vdir, True)
            elif "projected" in v:
                src = v["projected"]
                mode = int(src.get("defaultMode", 0o644))
                files: dict[str, tuple[bytes, int]] = {}
                for s in src.get("sources") or []:
                    if "configMap" in s:
                        files.update(self._object_files(w, "ConfigMap", s["configMap"]["name"], s["configMap"].get("items"),
                                                        mode, bool(s["configMap"].get("optional"))))
                    elif "secret" in s:
                        files.update(self._object_files(w, "Secret", s["secret"]["name"], s["secret"].get("items"),
                                                        mode, bool(s["secret"].get("optional"))))
                    elif "downwardAPI" in s:
                        files.update(self._downward_files(w, s["downwardAPI"].get("items") or [], mode))
                    elif "serviceAccountToken" in s:
                        files[s["serviceAccountToken"].get("path", "token")] = (b"fakekube-service-account-token", mode)
                    else:
                        raise MountError(f'volume "{name}": projected source {sorted(s)} is not supported')
                self._write_files(vdir, files)
                out[name] = (vdir, True)
            elif "hostPath" in v:
                raise MountError(f'volume "{name}": hostPath volumes are refused by the fakekube kubelet '
                                 "(a pod must not write to the node); use a PVC or an emptyDir")
            else:
                kinds = sorted(k for k in v if k != "name")
                raise MountError(f'volume "{name}": volume type {kinds} is not supported by the fakekube kubelet')
        return out

    def _mounts(self, w: PodWorker, c: dict) -> list[dict]:
        assert w.volumes is not None
        mounts = []
        for m in c.get("volumeMounts") or []:
            if m["name"] not in w.volumes:
                raise ConfigError(f'container {c["name"]}: volumeMount "{m["name"]}" names no volume of the pod')
            source, always_ro = w.volumes[m["name"]]
            if m.get("subPath"):
                sub = Path(m["subPath"])
                if sub.is_absolute() or ".." in sub.parts:
                    raise ConfigError(f'container {c["name"]}: subPath {m["subPath"]!r} must be relative without ".."')
                source = source / sub
                source.mkdir(parents=True, exist_ok=True)  # the kubelet creates a missing subPath
            mounts.append({"source": str(source), "target": m["mountPath"], "readOnly": bool(m.get("readOnly")) or always_ro})
        net = w.dir / "etc"
        net.mkdir(exist_ok=True)
        (net / "hostname").write_text(w.hostname + "\n")
        mounts.append({"source": str(net / "hostname"), "target": "/etc/hostname", "readOnly": True})
        mounts.append({"source": str(self._hosts_file(w.group)), "target": "/etc/hosts", "readOnly": True})
        return mounts

    def _identity(self, w: PodWorker, c: dict) -> tuple[int | None, int | None, list[int]]:
        psc = w.spec.get("securityContext") or {}
        csc = c.get("securityContext") or {}
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        gid = csc.get("runAsGroup", psc.get("runAsGroup"))
        non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root and not uid:
            raise ConfigError("container has runAsNonRoot and image will run as root "
                              f"(pod: \"{w.name}_{w.namespace}({w.uid})\", container: {c['name']})")
        groups = [int(g) for g in psc.get("supplementalGroups") or []]
        if psc.get("fsGroup") is not None:
            groups.append(int(psc["fsGroup"]))
        if uid is not None and gid is None:
            gid = 0
        return uid, gid, groups

    def _launch(self, w: PodWorker, c: dict) -> None:
        name = c["name"]
        extra = [str(d) for d in self.images.get(str(c.get("image") or ""), [])]
        env = {"PATH": ":".join([*extra, self.image_path]), "HOSTNAME": w.hostname}
        env.update(self._env(w, c))
        uid, gid, groups = self._identity(w, c)
        env.setdefault("HOME", "/root" if not uid else "/")
        command = [expand(str(x), env) for x in (c.get("command") or []) + (c.get("args") or [])]
        runs = w.runs.setdefault(name, [])
        run = ContainerRun(name, len(runs), w.dir / "logs" / f"{name}.{len(runs)}.log")
        csc = c.get("securityContext") or {}
        if not command:
            raise ConfigError(f"container {name}: no command; images are not pulled, so the kubelet cannot know the "
                              "image's entrypoint: write command (and args) in the manifest")
        mounts = self._mounts(w, c)
        scratch = w.dir / "rootfs" / f"{name}.{len(runs)}"
        scratch.mkdir(parents=True, exist_ok=True)
        read_fd, write_fd = os.pipe()
        spec = {"netns": w.net.path if w.net else None, "scratch": str(scratch), "hostname": w.hostname,
                "mounts": mounts, "readOnlyRoot": bool(csc.get("readOnlyRootFilesystem")),
                "workingDir": c.get("workingDir") or "/", "command": command, "user": uid, "group": gid,
                "groups": groups, "noNewPrivs": csc.get("allowPrivilegeEscalation") is False,
                "dropAllCaps": "ALL" in ((csc.get("capabilities") or {}).get("drop") or []),
                "statusFd": write_fd, "parentPid": os.getpid(), "imageDirs": [*self.image_dirs, *extra]}
        spec_path = w.dir / f"{name}.{len(runs)}.json"
        spec_path.write_text(json.dumps(spec))
        with open(run.log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-I", "-S", SANDBOX, "run", str(spec_path)], env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    pass_fds=(write_fd,), start_new_session=True)
        os.close(write_fd)
        run.proc = proc
        runs.append(run)
        w.started[name] = not c.get("startupProbe")
        threading.Thread(target=self._reap, args=(w, run, read_fd, proc), name=f"reap-{w.name}-{name}", daemon=True).start()

    def _reap(self, w: PodWorker, run: ContainerRun, read_fd: int, proc: subprocess.Popen) -> None:
        chunks = []
        while True:
            data = os.read(read_fd, 4096)
            if not data:
                break
            chunks.append(data)
        os.close(read_fd)
        failure = b"".join(chunks).decode(errors="replace")
        if not failure:
            run.started_at = now_iso()
            self._event(w.pod, "Normal", "Started", f"Started container {run.name}")
        self.wake()
        rc = proc.wait()
        run.finished_at = now_iso()
        if failure:
            run.exit_code, run.reason, run.message = 128, "StartError", failure
            self._event(w.pod, "Warning", "Failed", f"Error: {failure}")
        else:
            run.exit_code = 128 - rc if rc < 0 else rc
            run.reason = "Completed" if run.exit_code == 0 else "Error"
        run.done.set()
        self.wake()

    # -- probes, termination

    def _check_probes(self, w: PodWorker, c: dict, run: ContainerRun) -> None:
        name = c["name"]
        if not run.running:
            return
        probers = w.probers.get(name)
        if probers is None or any(p.run_ is not run for p in probers):
            self._stop_probes(w, name)
            probers = w.probers[name] = []
            for kind in ("startup", "readiness", "liveness"):
                probe = c.get(f"{kind}Probe")
                if probe:
                    p = Prober(self, w, c, run, kind, probe)
                    probers.append(p)
                    p.start()
        for p in probers:
            if p.kind == "startup" and p.passing:
                w.started[name] = True
            if p.failed and run.kill_deadline is None:
                self._event(w.pod, "Warning", "Unhealthy", f"{p.kind.capitalize()} probe failed; container {name} will be restarted")
                grace = int(w.spec.get("terminationGracePeriodSeconds", 30))
                run.signal(signal.SIGTERM)
                run.kill_deadline = time.monotonic() + grace

    def _stop_probes(self, w: PodWorker, name: str) -> None:
        for p in w.probers.pop(name, []):
            p.stop.set()

    def _ready(self, w: PodWorker, c: dict) -> bool:
        run = w.current(c["name"])
        if run is None or not run.running or w.terminating:
            return False
        if not w.started.get(c["name"]):
            return False
        if not c.get("readinessProbe"):
            return True
        return any(p.kind == "readiness" and p.passing and p.run_ is run for p in w.probers.get(c["name"], []))

    def _terminate(self, w: PodWorker, grace: int) -> None:
        if not w.terminating:
            w.terminating = True
            self._event(w.pod, "Normal", "Killing", "Stopping container(s)")
        now = time.monotonic()
        for run in w.alive():
            if run.kill_deadline is None:
                run.signal(signal.SIGTERM)
                run.kill_deadline = now + grace
            else:
                run.kill_deadline = min(run.kill_deadline, now + grace)
        for probers in list(w.probers.values()):
            for p in probers:
                p.stop.set()

    def _kill_overdue(self, w: PodWorker) -> None:
        now = time.monotonic()
        for run in w.alive():
            if run.kill_deadline is not None and now >= run.kill_deadline:
                run.signal(signal.SIGKILL)

    def _finish(self, w: PodWorker) -> None:
        if w.phase in TERMINAL:
            return
        codes = [r.exit_code for r in (w.current(c["name"]) for c in w.containers()) if r is not None]
        w.phase = "Succeeded" if codes and len(codes) == len(w.containers()) and all(x == 0 for x in codes) else "Failed"

    # -- networks and hosts files

    def _attach_net(self, w: PodWorker) -> None:
        with self._lock:
            entry = self.nets.get(w.group)
            if entry is None:
                net = NetNS(f"{w.namespace}-{w.hostname}")
                for port in sorted(self.host_ports):
                    net.expose(port)
                entry = self.nets[w.group] = (net, set())
            entry[1].add(w.uid)
            w.net = entry[0]
        self._sync_hosts()

    def _release_net(self, w: PodWorker) -> None:
        with self._lock:
            entry = self.nets.get(w.group)
            if entry is None or w.uid not in entry[1]:
                return
            entry[1].discard(w.uid)
            if not entry[1]:
                del self.nets[w.group]
                self._net_addrs.pop(w.group, None)
                entry[0].close()

    def _hosts_file(self, group: tuple[str, str]) -> Path:
        d = self.root / "net" / "-".join(group)
        d.mkdir(parents=True, exist_ok=True)
        p = d / "hosts"
        if not p.exists():
            p.write_text("127.0.0.1\tlocalhost\n")
        return p

    def _sync_hosts(self) -> None:
        """One hosts file per network: every pod in it, under its hostname and, where a Service
        named after its subdomain exists, its DNS names (<host>.<subdomain>.<ns>.svc...)."""
        with self._lock:
            groups: dict[tuple[str, str], list[PodWorker]] = {}
            for w in self.workers.values():
                if w.net is not None and not w.final_written:
                    groups.setdefault(w.group, []).append(w)
        service_list = self.fake.list("v1", "Service")["items"]
        services = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in service_list}
        headless = self._headless_endpoints(service_list, groups)
        for group, members in groups.items():
            lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
            for w in sorted(members, key=lambda m: m.hostname):
                names = [w.hostname]
                if w.subdomain and (w.namespace, w.subdomain) in services:
                    base = f"{w.hostname}.{w.subdomain}"
                    names = [f"{base}.{w.namespace}.svc.cluster.local", f"{base}.{w.namespace}.svc", base, w.hostname]
                lines.append("127.0.0.1\t" + " ".join(names))
            namespace = members[0].namespace
            for (ns, svc), addresses in sorted(headless.items()):
                names = f"{svc}.{ns}.svc.cluster.local {svc}.{ns}.svc" + (f" {svc}" if ns == namespace else "")
                lines += [f"{ip}\t{names}" for ip in addresses]
            text = "\n".join(lines) + "\n"
            p = self._hosts_file(group)
            if p.read_text() != text:
                with open(p, "r+") as f:  # in place: containers bind-mount this inode
                    f.write(text)
                    f.truncate()

    def _headless_endpoints(self, service_list: list[dict],
                            groups: dict[tuple[str, str], list[PodWorker]]) -> dict[tuple[str, str], list[str]]:
        """Headless Services (clusterIP None, with a selector, not a pod group's subdomain: those
        resolve through the group's shared network above): (namespace, name) -> the addresses of
        their ready pods, as cluster DNS answers for `<svc>.<ns>.svc`. Each such pod gets an
        address of its own (an IPv6 ULA, fd00:f4ce::N); in every pod network that address is
        added to the loopback and a relay listens on it at each of the Service's target ports and
        carries the connection into the pod's own network, as a pod IP would be routed. IPv6 and
        IPV6_V6ONLY, so a pod's own 0.0.0.0:<port> (every server here binds IPv4) never collides
        with a relay on the same port. A pod that is not ready leaves the answer (its relays stay
        while it runs: a pod IP stays routable); a pod that is gone takes its relays with it."""
        from fakekube.server import parse_label_selector

        with self._lock:
            workers = [w for w in self.workers.values() if w.net is not None and not w.final_written]
        subdomains = {(w.namespace, w.subdomain) for w in workers if w.subdomain}
        out: dict[tuple[str, str], list[str]] = {}
        wanted: set[tuple[tuple[str, str], str, int]] = set()
        for svc in service_list:
            meta, spec = svc["metadata"], svc.get("spec") or {}
            key = (meta["namespace"], meta["name"])
            if spec.get("clusterIP") != "None" or not spec.get("selector") or key in subdomains:
                continue
            match = parse_label_selector(",".join(f"{k}={v}" for k, v in spec["selector"].items()))
            for w in sorted(workers, key=lambda x: x.name):
                if w.namespace != key[0] or not match(w.pod["metadata"].get("labels") or {}) or w.terminating:
                    continue
                ip = self.pod_ips.get(w.uid)
                if ip is None:
                    self._next_ip += 1
                    ip = self.pod_ips[w.uid] = f"fd00:f4ce::{self._next_ip:x}"
                ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                            for c in (w.pod.get("status") or {}).get("conditions") or [])
                if ready or spec.get("publishNotReadyAddresses"):
                    out.setdefault(key, []).append(ip)
                for port in self._target_ports(w, spec.get("ports") or []):
                    for group in groups:
                        wanted.add((group, ip, port))
                        if (group, ip, port) not in self._svc_relays and group in self.nets:
                            try:
                                self._svc_relays[(group, ip, port)] = (self._relay_to(group, w, ip, port), w.uid)
                            except OSError as exc:  # that network is going away: the next sync knows
                                sys.stderr.write(f"fakekube kubelet: no relay to {w.name}:{port} in {group}: {exc}\n")
        live = {w.uid for w in workers}
        for k in [k for k, (_, uid) in self._svc_relays.items() if k not in wanted or uid not in live]:
            relay, _ = self._svc_relays.pop(k)
            relay.close()
        for uid in [u for u in self.pod_ips if u not in live]:
            del self.pod_ips[uid]
        return out

    @staticmethod
    def _target_ports(w: PodWorker, ports: list[dict]) -> list[int]:
        out = []
        for sp in ports:
            target = sp.get("targetPort", sp.get("port"))
            if isinstance(target, int) or str(target).isdigit():
                out.append(int(target))
                continue
            for c in w.containers():
                out += [int(p["containerPort"]) for p in c.get("ports") or [] if p.get("name") == target]
        return out

    def _relay_to(self, group: tuple[str, str], target: PodWorker, ip: str, port: int) -> Relay:
        """Listen on ip:port inside `group`'s network; each connection goes to port in the target's."""
        with self._lock:
            net = self.nets[group][0]
        addrs = self._net_addrs.setdefault(group, set())
        if ip not in addrs:
            done = subprocess.run(["nsenter", f"--net={net.path}", "ip", "-6", "addr", "add", f"{ip}/128", "dev", "lo",
                                   "nodad"], capture_output=True, text=True)
            if done.returncode != 0 and "exists" not in done.stderr:
                raise OSError(f"ip addr add {ip} in {group}: {done.stderr.strip()}")
            addrs.add(ip)
        listener = net.socket(socket.AF_INET6)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener.bind((ip, port))
        listener.listen(64)
        peer = target.net
        assert peer is not None

        def dial() -> Any:
            conn = peer.dial(port, timeout=5.0)
            conn.settimeout(None)
            return conn

        return Relay(listener, dial, f"svc-{target.name}-{port}")

    def _cleanup(self, w: PodWorker) -> None:
        for probers in list(w.probers.values()):
            for p in probers:
                p.stop.set()
        self._release_net(w)
        with self._lock:
            self.workers.pop(w.uid, None)
        shutil.rmtree(w.dir, ignore_errors=True)

    # -- status

    def _container_status(self, w: PodWorker, c: dict, init: bool) -> dict:
        name = c["name"]
        runs = w.runs.get(name) or []
        run = runs[-1] if runs else None
        st: dict[str, Any] = {"name": name, "image": c.get("image", ""), "imageID": "fakekube://host",
                              "restartCount": max(0, len(runs) - 1), "ready": False, "started": False}
        waiting = w.waiting.get(name)
        if run is not None:
            st["containerID"] = w.container_id(run)
        if len(runs) > 1:
            prev = runs[-2]
            st["lastState"] = {"terminated": prev.terminated(w.container_id(prev))}
        else:
            st["lastState"] = {}
        if waiting and (run is None or run.done.is_set()):
            st["state"] = {"waiting": {"reason": waiting[0], **({"message": waiting[1]} if waiting[1] else {})}}
            if run is not None and run.done.is_set() and waiting[0] == "CrashLoopBackOff":
                st["lastState"] = {"terminated": run.terminated(w.container_id(run))}
        elif run is None:
            reason = "PodInitializing" if (not init and w.init_containers() and w.volumes is not None) else "ContainerCreating"
            st["state"] = {"waiting": {"reason": reason}}
        elif run.done.is_set():
            st["state"] = {"terminated": run.terminated(w.container_id(run))}
        elif run.started_at is None:
            st["state"] = {"waiting": {"reason": "ContainerCreating"}}
        else:
            st["state"] = {"running": {"startedAt": run.started_at}}
            st["started"] = bool(w.started.get(name))
            st["ready"] = False if init else self._ready(w, c)
        return st

    def _status(self, w: PodWorker) -> dict:
        t = w.start_time
        init = [self._container_status(w, c, True) for c in w.init_containers()]
        main = [self._container_status(w, c, False) for c in w.containers()]
        ready = (w.phase not in TERMINAL and not w.terminating and bool(main)
                 and all(self._ready(w, c) for c in w.containers()))
        gates = [g["conditionType"] for g in w.spec.get("readinessGates") or []]
        current = {c.get("type"): c.get("status") for c in (w.pod.get("status") or {}).get("conditions") or []}
        pod_ready = ready and all(current.get(g) == "True" for g in gates)

        def cond(type_: str, ok: bool, reason: str = "") -> dict:
            old = next((c for c in (w.pod.get("status") or {}).get("conditions") or [] if c.get("type") == type_), None)
            status = "True" if ok else "False"
            since = old.get("lastTransitionTime") if old and old.get("status") == status else now_iso()
            out = {"type": type_, "status": status, "lastProbeTime": None, "lastTransitionTime": since}
            if reason and not ok:
                out["reason"] = reason
            return out

        sandbox = w.net is not None and w.phase not in TERMINAL and not w.final_written
        conditions = [
            cond("PodReadyToStartContainers", sandbox or bool(w.runs)),
            cond("Initialized", w.init_done, "ContainersNotInitialized"),
            cond("ContainersReady", ready, "PodCompleted" if w.phase in TERMINAL else "ContainersNotReady"),
            cond("Ready", pod_ready, "PodCompleted" if w.phase in TERMINAL else "ContainersNotReady"),
            cond("PodScheduled", True),
        ]
        status = {"phase": w.phase, "conditions": conditions, "hostIP": "127.0.0.1", "startTime": t,
                  "containerStatuses": main, "qosClass": "Burstable"}
        if init:
            status["initContainerStatuses"] = init
        return status

    def _write_status(self, w: PodWorker) -> None:
        status = self._status(w)
        if w.terminating and not w.alive():
            w.final_written = True
        comparable = json.dumps(status, sort_keys=True)
        if comparable == w.last_status:
            return
        w.last_status = comparable  # type: ignore[assignment]
        self._patch_pod_status(w.namespace, w.name, status)

    def _patch_pod_status(self, namespace: str, name: str, status: dict) -> None:
        try:
            self.fake.patch_status("v1", "Pod", namespace, name, status, manager="kubelet", strategic=True)
        except ApiError:
            pass

    def _event(self, obj: dict, type_: str, reason: str, message: str, component: str = "kubelet") -> None:
        meta = obj["metadata"]
        key = (reason, message)
        w = self.workers.get(meta["uid"])
        if w is not None:
            if key in w.events:
                return
            w.events.add(key)
        t = now_iso()
        try:
            self.fake.create({"apiVersion": "v1", "kind": "Event",
                              "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
                              "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                                 "namespace": meta["namespace"], "uid": meta["uid"]},
                              "reason": reason, "message": message, "type": type_, "count": 1,
                              "source": {"component": component, "host": self.node_name},
                              "firstTimestamp": t, "lastTimestamp": t, "reportingComponent": component},
                             manager=component)
        except ApiError:
            pass

    # -- logs (the API server's /log endpoint asks here)

    def log_result(self, namespace: str, name: str, query: dict) -> LogResult:
        try:
            w = self.worker(namespace, name)
        except KeyError:
            pod = self.fake.get("v1", "Pod", namespace, name)
            names = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
            c = query.get("container") or (names[0] if len(names) == 1 else "")
            return LogResult(error=f'container "{c}" in pod "{name}" is waiting to start: ContainerCreating')
        names = [c["name"] for c in w.containers()]
        all_names = names + [c["name"] for c in w.init_containers()]
        container = query.get("container")
        if not container:
            if len(names) != 1:
                return LogResult(error=f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]")
            container = names[0]
        if container not in all_names:
            return LogResult(error=f"container {container} is not valid for pod {name}")
        runs = list(w.runs.get(container) or [])
        if query.get("previous") in ("true", "1"):
            if len(runs) < 2:
                return LogResult(error=f'previous terminated container "{container}" in pod "{name}" not found')
            run = runs[-2]
        elif not runs:
            reason = "PodInitializing" if container in names and w.init_containers() else "ContainerCreating"
            return LogResult(error=f'container "{container}" in pod "{name}" is waiting to start: {reason}')
        else:
            run = runs[-1]
        data = run.log_path.read_bytes() if run.log_path.exists() else b""
        text = data.decode(errors="replace")
        if query.get("tailLines"):
            n = int(query["tailLines"])
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-n:]) if n > 0 else ""
        if query.get("limitBytes"):
            text = text.encode()[: int(query["limitBytes"])].decode(errors="ignore")
        offset = len(data)

        def follow() -> Iterator[bytes]:
            pos = offset
            while True:
                finished = run.done.is_set()
                size = run.log_path.stat().st_size if run.log_path.exists() else 0
                if size > pos:
                    with open(run.log_path, "rb") as f:
                        f.seek(pos)
                        chunk = f.read(size - pos)
                    pos = size
                    yield chunk
                if finished:
                    return
                time.sleep(0.1)

        return LogResult(text=text, follow=follow)
