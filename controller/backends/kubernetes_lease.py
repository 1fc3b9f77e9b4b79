"""Leader election on a coordination.k8s.io/v1 Lease, with a fence for every write.

Why: the chart may run 2+ controller replicas for availability, but only one may act, or two
controllers would race to submit Jobs, write status and append to the ledger. The Lease is the
lock; the fence is what makes the lock safe for a leader that is paused (GC, SIGSTOP, a node
that froze) and wakes up after someone else took over.

The algorithm is client-go's (leaderelection.go), in the same terms:

* acquire/renew: read the Lease; if it names someone else and we have not seen it change for
  `lease_duration` seconds (measured on *our* clock from when *we* first observed that record,
  so clock skew between nodes does not matter), take it. Every write is a PUT carrying the
  resourceVersion we read, so two candidates racing for an expired lease cannot both win: the
  second gets 409 Conflict.
* a leader that cannot renew for `renew_deadline` seconds stops leading. `renew_deadline` is
  shorter than `lease_duration`, so a leader gives up before any follower may take over.
* fencing: `ensure_leader()` (the backend's `fence`, called before each write) raises
  `NotLeader` unless (1) the last successful renewal started less than `renew_deadline` ago on
  our clock, which catches a paused process, and (2) with `verify=True`, the Lease on the
  server still names us at the resourceVersion we wrote, which catches a deposed leader whose
  clock misleads it. What remains is a write already in flight when the lease is lost; the margin
  `lease_duration - renew_deadline` bounds that window, and Job submits are idempotent anyway
  (the Job name is derived from the run id, so a late duplicate apply changes nothing).

The clock is injectable so tests can pause a leader and measure failover exactly.
"""
from __future__ import annotations

import os
import socket
import threading
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from controller.clock import SYSTEM_CLOCK, Clock, SystemClock
from controller.errors import TemporaryError

LEASE_API = "coordination.k8s.io/v1"


class NotLeader(TemporaryError):
    """This process does not (or no longer) hold the leader Lease: it must not write."""


def micro_time(moment: datetime | None = None) -> str:
    """A Kubernetes MicroTime string (RFC 3339 with microseconds, UTC)."""
    moment = moment or datetime.now(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    """The pod name (unique per replica) plus a random suffix, so a restarted container with the
    same pod name is a new candidate and never mistakes the old holder's lease for its own."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


class LeaderElector:
    """Acquire, renew, release and fence one Lease. Thread-safe.

    Use `run(stop)` in a thread (it acquires, renews every `retry_period` and calls the
    callbacks), and give `ensure_leader` to every writer as its fence."""

    def __init__(self, api_client: Any = None, *, namespace: str, name: str = "ftops-controller",
                 identity: str | None = None, lease_duration: float = 15.0, renew_deadline: float = 10.0,
                 retry_period: float = 2.0, clock: Clock = SYSTEM_CLOCK, verify: bool = True,
                 kubeconfig: str | None = None, context: str | None = None) -> None:
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs 0 < retry_period < renew_deadline < lease_duration "
                             f"(got {retry_period}, {renew_deadline}, {lease_duration})")
        from controller.backends.kubernetes import KubernetesBackend

        # Its own unfenced client: the elector is the one writer that must write while not leading.
        self._k8s = KubernetesBackend(api_client, kubeconfig=kubeconfig, context=context, namespaces=[namespace],
                                      field_manager="ftops-leader-election")
        self.namespace, self.name = namespace, name
        self.identity = identity or default_identity()
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self.clock = clock
        self.verify = verify
        self._lock = threading.RLock()
        self._leading = False
        self._renewed_at: float | None = None  # our clock, taken *before* the successful renew was sent
        self._held_rv: str | None = None  # resourceVersion of the Lease as we last wrote it
        self._observed: tuple | None = None  # (holder, renewTime, resourceVersion) last seen
        self._observed_at: float = 0.0  # our clock when that record was first seen
        self.transitions_seen = 0

    # -- HTTP

    def _path(self) -> str:
        from controller.backends.kubernetes import resource_path

        return resource_path(LEASE_API, "Lease", self.namespace, self.name)

    def _get(self) -> dict | None:
        from controller.backends.kubernetes import ApiError

        try:
            return self._k8s._request("GET", self._path())
        except ApiError as err:
            if err.code == 404:
                return None
            raise TemporaryError(f"reading Lease {self.namespace}/{self.name}: {err}") from None

    def _write(self, method: str, lease: dict) -> dict | None:
        """POST (create) or PUT (update, guarded by the resourceVersion inside). None on 409."""
        from controller.backends.kubernetes import ApiError, resource_path

        path = resource_path(LEASE_API, "Lease", self.namespace) if method == "POST" else self._path()
        try:
            return self._k8s._request(method, path, body=lease)
        except ApiError as err:
            if err.code == 409:
                return None
            raise TemporaryError(f"writing Lease {self.namespace}/{self.name}: {err}") from None

    # -- election

    def try_acquire_or_renew(self) -> bool:
        """One election step: renew our lease, or take it if it is free or expired. True while we
        hold it. Never raises for a lost race; raises TemporaryError when the API is unreachable."""
        with self._lock:
            started = self.clock.monotonic()
            lease = self._get()
            now_wall = micro_time()
            seconds = max(1, round(self.lease_duration))
            if lease is None:
                body = {"apiVersion": LEASE_API, "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace},
                        "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": seconds,
                                 "acquireTime": now_wall, "renewTime": now_wall, "leaseTransitions": 0}}
                return self._won(self._write("POST", body), started)
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            meta = lease["metadata"]
            record = (holder, spec.get("renewTime"), meta.get("resourceVersion"))
            if record != self._observed:
                self._observed, self._observed_at = record, started
            held_by_other = holder not in ("", self.identity)
            expired = started - self._observed_at >= float(spec.get("leaseDurationSeconds") or self.lease_duration)
            if held_by_other and not expired:
                self._lost()
                return False
            new_spec = dict(spec)
            new_spec.update({"holderIdentity": self.identity, "leaseDurationSeconds": seconds, "renewTime": now_wall})
            if holder != self.identity:
                new_spec["acquireTime"] = now_wall
                new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
            body = {"apiVersion": LEASE_API, "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace,
                                 "resourceVersion": meta["resourceVersion"]},
                    "spec": new_spec}
            return self._won(self._write("PUT", body), started)

    def _won(self, written: dict | None, started: float) -> bool:
        if written is None:  # someone else wrote first
            self._lost()
            return False
        spec = written.get("spec") or {}
        rv = written["metadata"]["resourceVersion"]
        self._observed = (spec.get("holderIdentity"), spec.get("renewTime"), rv)
        self._observed_at = started
        if not self._leading:
            self.transitions_seen += 1
        self._leading, self._renewed_at, self._held_rv = True, started, rv
        return True

    def _lost(self) -> None:
        self._leading, self._renewed_at, self._held_rv = False, None, None

    # -- fencing

    def is_leader(self) -> bool:
        """Local check only: we renewed less than `renew_deadline` ago (by our clock)."""
        with self._lock:
            return (self._leading and self._renewed_at is not None
                    and self.clock.monotonic() - self._renewed_at < self.renew_deadline)

    def ensure_leader(self) -> None:
        """The fence: raise NotLeader unless we may write now. Call before every write."""
        with self._lock:
            if not self._leading:
                raise NotLeader(f"{self.identity} is not the leader (Lease {self.namespace}/{self.name}); not writing")
            if not self.is_leader():
                elapsed = self.clock.monotonic() - (self._renewed_at or 0)
                self._lost()
                raise NotLeader(f"{self.identity} last renewed Lease {self.namespace}/{self.name} {elapsed:.1f}s ago "
                                f"(renew deadline {self.renew_deadline}s): it may have been taken over; not writing")
            if not self.verify:
                return
            lease = self._get()
            spec = (lease or {}).get("spec") or {}
            rv = ((lease or {}).get("metadata") or {}).get("resourceVersion")
            if spec.get("holderIdentity") != self.identity or rv != self._held_rv:
                self._lost()
                raise NotLeader(f"Lease {self.namespace}/{self.name} is now held by "
                                f"'{spec.get('holderIdentity') or 'nobody'}', not {self.identity}; not writing")

    # -- release and loop

    def release(self) -> bool:
        """Give the lease up (on a clean shutdown) so a follower takes over at its next retry
        instead of waiting for expiry. Only if we still hold it, guarded by its resourceVersion."""
        with self._lock:
            if not self._leading:
                return False
            lease = self._get()
            self._lost()
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return False
            spec = dict(lease["spec"])
            spec.update({"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": micro_time()})
            body = {"apiVersion": LEASE_API, "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace,
                                 "resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": spec}
            return self._write("PUT", body) is not None

    def run(self, stop: threading.Event, on_started_leading: Callable[[], None] | None = None,
            on_stopped_leading: Callable[[], None] | None = None, sleep: Callable[[float], Any] | None = None) -> None:
        """Acquire and keep renewing until `stop` is set; release on the way out. Callbacks run in
        this thread and must return quickly (start or stop the reconcile loop, not run it)."""
        wait = sleep or (stop.wait if isinstance(self.clock, SystemClock) else self.clock.sleep)
        leading = False
        try:
            while not stop.is_set():
                try:
                    self.try_acquire_or_renew()
                except TemporaryError:
                    pass  # the API is unreachable: keep trying until the renew deadline fences us
                now_leading = self.is_leader()
                if now_leading and not leading and on_started_leading:
                    on_started_leading()
                if leading and not now_leading and on_stopped_leading:
                    on_stopped_leading()
                leading = now_leading
                wait(self.retry_period)
        finally:
            if leading and on_stopped_leading:
                on_stopped_leading()
            try:
                self.release()
            except TemporaryError:
                pass


__all__ = ["LeaderElector", "NotLeader", "default_identity", "micro_time"]
