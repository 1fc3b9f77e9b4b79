"""Leader election on a Lease against the fake API server: exactly one controller acts, a
paused leader is fenced and a follower takes over within the lease duration (+ one retry
period, its polling granularity) of the last renewal, measured on a controllable clock, and the
same Job submitted by both controllers is written once."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "render"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # fakes

from fakes import SteppedClock  # noqa: E402

from controller.seams import Lineage, Run  # noqa: E402
from controller.backends.kubernetes import KubernetesBackend, load_api_client  # noqa: E402
from controller.backends.kubernetes_lease import LeaderElector, NotLeader  # noqa: E402
from render_sample import render_input  # noqa: E402

NS = "ftops-system"
TENANT = "ftops-team-a"
LEASE, RENEW, RETRY = 15.0, 10.0, 2.0


class Clock:
    """A clock the test moves by hand (controller.clock.Clock)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def cluster(fake_kube, tmp_path):
    fake_kube.ensure_namespace(NS)
    fake_kube.ensure_namespace(TENANT)
    path = tmp_path / "kubeconfig"
    path.write_text(fake_kube.kubeconfig())
    return fake_kube, load_api_client(str(path))


def elector(api, identity: str, clock, **kw) -> LeaderElector:
    return LeaderElector(api, namespace=NS, identity=identity, lease_duration=LEASE, renew_deadline=RENEW,
                         retry_period=RETRY, clock=clock, **kw)


def fenced_backend(api, e: LeaderElector) -> KubernetesBackend:
    return KubernetesBackend(api, namespaces=[TENANT], fence=e.ensure_leader, operator=render_input().operator)


def the_run() -> Run:
    inp = render_input()
    return Run(inp.run_config, inp.finetune, Lineage(inp.data_md5, inp.git_commit))


def job_writes(fake) -> int:
    return sum(1 for r in fake.requests if r["method"] != "GET" and "/jobs" in r["path"])


def test_exactly_one_acts_and_the_follower_cannot_submit(cluster):
    fake, api = cluster
    clock = Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False
    assert a.is_leader() and not b.is_leader()
    lease = fake.get("coordination.k8s.io/v1", "Lease", NS, "ftops-controller")
    assert lease["spec"]["holderIdentity"] == "a" and lease["spec"]["leaseDurationSeconds"] == 15

    run = the_run()
    fenced_backend(api, a).submit(run)
    writes = job_writes(fake)
    rv = fake.resource_version
    with pytest.raises(NotLeader):
        fenced_backend(api, b).submit(run)
    assert job_writes(fake) == writes and fake.resource_version == rv  # b sent nothing
    assert len(fake.list("batch/v1", "Job", TENANT)["items"]) == 1


def test_paused_leader_is_fenced_and_follower_takes_over_within_the_lease_duration(cluster):
    fake, api = cluster
    clock = Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert a.try_acquire_or_renew()
    # a renews a few times while b keeps polling, as their loops would
    for _ in range(3):
        clock.advance(RETRY)
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()
    last_renewal = clock()
    run = the_run()
    backend_a, backend_b = fenced_backend(api, a), fenced_backend(api, b)

    # a pauses (a GC stall, SIGSTOP): it stops renewing; b polls every retry period
    took_over_at = None
    while clock() - last_renewal < 10 * LEASE:
        clock.advance(RETRY)
        if b.try_acquire_or_renew():
            took_over_at = clock()
            break
    assert took_over_at is not None
    assert RENEW < took_over_at - last_renewal <= LEASE + RETRY  # never before a is fenced; within the lease
    lease = fake.get("coordination.k8s.io/v1", "Lease", NS, "ftops-controller")
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1

    backend_b.submit(run)  # the new leader acts
    writes = job_writes(fake)
    # a wakes up and tries to carry on where it stopped: fenced before it sends anything
    with pytest.raises(NotLeader, match="renewed"):
        backend_a.submit(run)
    assert job_writes(fake) == writes
    assert len(fake.list("batch/v1", "Job", TENANT)["items"]) == 1
    assert a.try_acquire_or_renew() is False  # and it stays a follower while b renews


def test_a_deposed_leader_with_a_misleading_clock_is_fenced_by_the_server_check(cluster):
    fake, api = cluster
    clock_a, clock_b = Clock(), Clock()  # separate clocks: a's does not move (it was frozen)
    a, b = elector(api, "a", clock_a), elector(api, "b", clock_b)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    clock_b.advance(LEASE + RETRY)
    assert b.try_acquire_or_renew()  # from b's point of view a's lease expired
    assert a.is_leader()  # a's own clock says its renewal is fresh...
    with pytest.raises(NotLeader, match="held by 'b'"):
        a.ensure_leader()  # ...but the Lease on the server names b
    assert not a.is_leader()
    unverified = elector(api, "c", Clock(), verify=False)
    with pytest.raises(NotLeader):
        unverified.ensure_leader()  # never acquired


def test_racing_candidates_for_an_expired_lease_cannot_both_win(cluster):
    fake, api = cluster
    clock = Clock()
    a, b, c = (elector(api, n, clock) for n in "abc")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew() and not c.try_acquire_or_renew()
    clock.advance(LEASE + 1)
    # c writes between b's read and b's write: b's PUT carries a stale resourceVersion
    fake.before_next("PUT", r"/leases/ftops-controller$", lambda: c.try_acquire_or_renew())
    assert b.try_acquire_or_renew() is False
    assert c.is_leader() and not b.is_leader()
    assert fake.get("coordination.k8s.io/v1", "Lease", NS, "ftops-controller")["spec"]["holderIdentity"] == "c"


def test_release_hands_over_at_the_next_retry_not_after_expiry(cluster):
    fake, api = cluster
    clock = Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    assert a.release() is True
    clock.advance(RETRY)
    assert b.try_acquire_or_renew()  # well before LEASE seconds
    with pytest.raises(NotLeader):
        a.ensure_leader()


def test_timings_must_leave_the_leader_time_to_stop_before_a_takeover(cluster):
    _, api = cluster
    with pytest.raises(ValueError):
        LeaderElector(api, namespace=NS, lease_duration=10, renew_deadline=10, retry_period=2)


def test_two_real_run_loops_fail_over_when_the_leader_stops_renewing(cluster):
    """The same with the real run loops in threads, on simulated time (SteppedClock): each loop
    does one election step per retry period of simulated time, so the failover is measured
    exactly, whatever the machine's load."""
    fake, api = cluster
    clock = SteppedClock(participants=1)
    started: list[str] = []
    stopped: list[str] = []
    stops = {n: threading.Event() for n in "ab"}
    electors = {n: LeaderElector(api, namespace=NS, identity=n, lease_duration=LEASE, renew_deadline=RENEW,
                                 retry_period=RETRY, clock=clock) for n in "ab"}
    paused = threading.Event()  # a pause, not a clean exit: a's loop stops renewing without releasing

    def sleep_a(seconds: float) -> None:
        clock.sleep(seconds)
        while paused.is_set() and not stops["a"].is_set():
            clock.sleep(RETRY)

    threads = [threading.Thread(target=electors["a"].run, args=(stops["a"], lambda: started.append("a"),
                                                                 lambda: stopped.append("a"), sleep_a), daemon=True)]
    threads[0].start()
    clock.settle()
    assert started == ["a"]
    clock.participants = 2
    threads.append(threading.Thread(target=electors["b"].run, args=(stops["b"], lambda: started.append("b"),
                                                                     lambda: stopped.append("b")), daemon=True))
    threads[1].start()
    for _ in range(5):
        clock.step(RETRY)
    assert started == ["a"]  # b waits while a renews
    paused.set()
    last_renewal = clock.monotonic()  # a renewed in the step that just ran
    while "b" not in started and clock.monotonic() - last_renewal < 10 * LEASE:
        clock.step(RETRY)
    assert started == ["a", "b"]
    # b measures the lease from when it first saw a's last renewal: up to one retry period after
    # it happened (the loops run concurrently), plus one for its own polling.
    assert RENEW < clock.monotonic() - last_renewal <= LEASE + 2 * RETRY
    with pytest.raises(NotLeader):
        electors["a"].ensure_leader()
    for n in "ab":
        stops[n].set()
    paused.clear()
    clock.close()
    for t in threads:
        t.join(30)
    lease = fake.get("coordination.k8s.io/v1", "Lease", NS, "ftops-controller")
    assert lease["spec"]["holderIdentity"] == ""  # b released on its way out


def test_two_controllers_writing_concurrently_never_interleave(cluster):
    """Two full controllers (elector + fenced backend + FineTune mirror) in threads, both trying
    to write status as fast as they can. a's renewals stall while its worker keeps going (a stale
    leader); b takes over. In the API server's request log every write by a comes before b's
    first one: never two writers at once. The electors run on simulated time; after each step
    every worker finishes two more write attempts, so no write from before a step is still in
    flight when the next one begins."""
    import yaml

    from cluster_helpers import example_specs
    from controller.backends.kubernetes_crd import CRD_FILE, FineTuneMirror
    from controller.status import SpecStatus

    fake, api = cluster
    KubernetesBackend(api)._request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                    body=yaml.safe_load(CRD_FILE.read_text()))
    ft = example_specs()[0]
    FineTuneMirror(KubernetesBackend(api), lambda _: TENANT).sync([ft])
    clock = SteppedClock(participants=1)
    stop = threading.Event()
    renew_paused = threading.Event()
    electors = {n: LeaderElector(api, namespace=NS, identity=n, lease_duration=LEASE, renew_deadline=RENEW,
                                 retry_period=RETRY, clock=clock) for n in "ab"}
    refused = {"a": 0, "b": 0}
    attempts = {"a": 0, "b": 0}
    progress = threading.Condition()

    def elector_sleep(name):
        def sleep(seconds: float) -> None:
            clock.sleep(seconds)
            while name == "a" and renew_paused.is_set() and not stop.is_set():
                clock.sleep(RETRY)
        return sleep

    def worker(name: str) -> None:
        mirror = FineTuneMirror(KubernetesBackend(api, field_manager=f"ftops-{name}", fence=electors[name].ensure_leader),
                                lambda _: TENANT)
        n = 0
        while not stop.is_set():
            n += 1
            try:
                mirror.write_status(TENANT, ft.name, SpecStatus(ft.name, message=f"{name} {n}"))
            except NotLeader:
                refused[name] += 1
            with progress:
                attempts[name] += 1
                progress.notify_all()

    def step() -> None:
        clock.step(RETRY)
        with progress:
            target = {n: attempts[n] + 2 for n in attempts}
            assert progress.wait_for(lambda: all(attempts[n] >= target[n] for n in attempts), timeout=120)

    threads = [threading.Thread(target=electors[n].run, args=(stop, None, None, elector_sleep(n)), daemon=True)
               for n in "ab"]
    threads[0].start()
    clock.settle()
    assert electors["a"].is_leader()
    clock.participants = 2
    threads[1].start()
    clock.settle()
    threads += [threading.Thread(target=worker, args=(n,), daemon=True) for n in "ab"]
    for t in threads[2:]:
        t.start()
    for _ in range(3):
        step()
    renew_paused.set()  # a's renewals stall; its worker does not
    for _ in range(int(10 * LEASE / RETRY)):
        step()
        if electors["b"].is_leader():
            break
    for _ in range(3):
        step()
    assert electors["b"].is_leader()
    stop.set()
    renew_paused.clear()
    clock.close()
    for t in threads:
        t.join(30)

    writers = [r["userAgent"].split("/")[0] for r in fake.requests
               if r["method"] == "PATCH" and r["path"].endswith(f"/finetunes/{ft.name}/status")]
    assert "ftops-a" in writers and "ftops-b" in writers
    first_b = writers.index("ftops-b")
    assert "ftops-b" not in writers[:first_b] and "ftops-a" not in writers[first_b:]
    assert refused["a"] > 0 and refused["b"] > 0  # both tried while not leading, and were fenced
