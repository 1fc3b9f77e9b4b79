"""The process kubelet and the controllers around it really run what the API server holds:
processes, volumes as directories, namespaces, probes, signals, and the status the real
components write. Pods here run small `python -c` programs."""
from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

NS = "default"
PY = "python"
KUBECTL = Path(__file__).resolve().parents[2] / ".tools" / "bin" / "kubectl"


def pvc(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}


def job(name: str, code: str, *, backoff: int = 0, claim: str | None = "work", env: list | None = None,
        policy: list | None = None, grace: int = 5, **spec: object) -> dict:
    container = {"name": "main", "image": "ghcr.io/ftops/trainer:test", "command": [PY, "-c", code], "env": env or []}
    pod_spec: dict = {"restartPolicy": "Never", "terminationGracePeriodSeconds": grace, "containers": [container]}
    if claim:
        container["volumeMounts"] = [{"name": "work", "mountPath": "/work/out"}]
        pod_spec["volumes"] = [{"name": "work", "persistentVolumeClaim": {"claimName": claim}}]
    body: dict = {"backoffLimit": backoff, "template": {"spec": pod_spec}, **spec}
    if policy is not None:
        body["podFailurePolicy"] = {"rules": policy}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": body}


def condition(cluster, kind: str, name: str, type_: str, api: str = "batch/v1") -> dict | None:
    return cluster.condition(api, kind, NS, name, type_)


def finished(cluster, name: str) -> dict | None:
    return condition(cluster, "Job", name, "Complete") or condition(cluster, "Job", name, "Failed")


def job_pods(cluster, name: str) -> list[dict]:
    return cluster.pods(NS, f"batch.kubernetes.io/job-name={name}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_a_job_writes_into_its_claim_and_completes(cluster):
    cluster.apply(pvc("work"), job("write", "open('/work/out/result.txt', 'w').write('done')"))
    done = cluster.wait(lambda: finished(cluster, "write"), 30)
    assert done["type"] == "Complete" and done["reason"] == "CompletionsReached"
    status = cluster.get("batch/v1", "Job", NS, "write")["status"]
    assert status["succeeded"] == 1 and status["failed"] == 0 and status["completionTime"]
    assert condition(cluster, "Job", "write", "SuccessCriteriaMet")  # 1.31: the criterion before Complete
    assert (cluster.claim_dir(NS, "work") / "result.txt").read_text() == "done"
    [pod] = job_pods(cluster, "write")
    st = pod["status"]
    assert st["phase"] == "Succeeded"
    term = st["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Job"
    assert "batch.kubernetes.io/job-tracking" not in (pod["metadata"].get("finalizers") or [])  # counted, released


def test_exit_1_is_retried_up_to_the_backoff_limit_then_fails(cluster):
    cluster.apply(job("flaky", "import sys; print('boom'); sys.exit(1)", backoff=2, claim=None))
    done = cluster.wait(lambda: finished(cluster, "flaky"), 60)
    assert done["type"] == "Failed" and done["reason"] == "BackoffLimitExceeded"
    assert done["message"] == "Job has reached the specified backoff limit"
    assert condition(cluster, "Job", "flaky", "FailureTarget")["reason"] == "BackoffLimitExceeded"
    assert cluster.get("batch/v1", "Job", NS, "flaky")["status"]["failed"] == 3  # the first try and 2 retries
    pods = job_pods(cluster, "flaky")
    assert len(pods) == 3
    assert all(p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 1 for p in pods)
    assert all(p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "Error" for p in pods)


def test_pod_failure_policy_fails_the_job_at_once_on_a_config_error(cluster):
    rules = [{"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [78]}}]
    cluster.apply(job("config", "import sys; sys.exit(78)", backoff=6, claim=None, policy=rules))
    done = cluster.wait(lambda: finished(cluster, "config"), 30)
    assert done["type"] == "Failed" and done["reason"] == "PodFailurePolicy"
    assert "failed with exit code 78 matching FailJob rule at index 0" in done["message"]
    assert len(job_pods(cluster, "config")) == 1  # no retry, though backoffLimit is 6


def test_preemption_is_ignored_and_a_replacement_resumes(cluster):
    # The trainer's contract: on SIGTERM save a checkpoint and exit 143; a new pod resumes from it.
    code = ("import os, signal, sys, time\n"
            "ck = '/work/out/checkpoint'\n"
            "if os.path.exists(ck):\n"
            "    open('/work/out/resumed', 'w').write(open(ck).read()); sys.exit(0)\n"
            "def term(*_):\n"
            "    open(ck, 'w').write('step 7'); sys.exit(143)\n"
            "signal.signal(signal.SIGTERM, term)\n"
            "open('/work/out/started', 'w').write('1')\n"
            "time.sleep(60)\n")
    rules = [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
             {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [78]}}]
    cluster.apply(pvc("work"), job("spot", code, backoff=0, policy=rules))
    claim = cluster.wait(lambda: (cluster.claim_dir(NS, "work") / "started").exists() and cluster.claim_dir(NS, "work"), 30)
    [first] = job_pods(cluster, "spot")
    cluster.preempt(NS, first["metadata"]["name"])
    done = cluster.wait(lambda: finished(cluster, "spot"), 30)
    assert done["type"] == "Complete"  # backoffLimit 0, yet the preempted pod did not count
    assert cluster.get("batch/v1", "Job", NS, "spot")["status"]["failed"] == 0
    assert (claim / "resumed").read_text() == "step 7"
    pods = job_pods(cluster, "spot")
    assert [p["metadata"]["name"] for p in pods] != [first["metadata"]["name"]] and len(pods) == 1  # the victim is gone
    gone = [e for e in cluster.events(NS, "Killing") if e["involvedObject"]["name"] == first["metadata"]["name"]]
    assert gone  # the kubelet stopped it (SIGTERM), it did not just vanish


def test_env_from_secrets_configmaps_fields_and_expansion(cluster):
    manifest = job("env", "import json, os; print(json.dumps({k: os.environ.get(k) for k in "
                          "['TOKEN', 'LEVEL', 'CFG_MODE', 'NS', 'POD', 'URL', 'HOSTNAME']}))", claim=None, env=[
                              {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                              {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}}},
                              {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                              {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                              {"name": "URL", "value": "https://$(NS).example/$(LEVEL)/$$(LEVEL)"}])
    manifest["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}]
    cluster.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"MODE": "fast", "level": "3"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}},
        manifest)
    assert cluster.wait(lambda: finished(cluster, "env"), 30)["type"] == "Complete"
    [pod] = job_pods(cluster, "env")
    log = urllib.request.urlopen(f"{cluster.url}/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}/log").read()
    assert json.loads(log) == {"TOKEN": "s3cr3t", "LEVEL": "3", "CFG_MODE": "fast", "NS": NS,
                               "POD": pod["metadata"]["name"], "URL": f"https://{NS}.example/3/$(LEVEL)",
                               "HOSTNAME": pod["metadata"]["name"]}


def test_a_missing_secret_waits_as_a_config_error_until_it_exists(cluster):
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "token"}}}]
    cluster.apply(job("waits", "import os; print(os.environ['TOKEN'])", claim=None, env=env))

    def waiting_reason():
        pods = job_pods(cluster, "waits")
        statuses = (pods[0].get("status") or {}).get("containerStatuses") if pods else None
        return statuses and (statuses[0]["state"].get("waiting") or {}).get("reason")

    assert cluster.wait(waiting_reason, 30) == "CreateContainerConfigError"
    [pod] = job_pods(cluster, "waits")
    assert 'secret "later" not found' in pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "later"}, "stringData": {"token": "now"}})
    assert cluster.wait(lambda: finished(cluster, "waits"), 30)["type"] == "Complete"


def test_a_pod_whose_claim_is_missing_stays_pending_and_hostpath_is_refused(cluster):
    cluster.apply(job("noclaim", "print('ran')", claim="absent"))
    pending = cluster.wait(lambda: condition_false(cluster, job_pods(cluster, "noclaim"), "PodScheduled"), 30)
    assert pending["reason"] == "Unschedulable" and 'persistentvolumeclaim "absent" not found' in pending["message"]
    assert any('"absent" not found' in e["message"] for e in cluster.events(NS, "FailedScheduling"))
    cluster.apply(pvc("absent"))
    assert cluster.wait(lambda: finished(cluster, "noclaim"), 30)["type"] == "Complete"

    bad = job("host", "print('never')", claim=None)
    bad["spec"]["template"]["spec"]["volumes"] = [{"name": "h", "hostPath": {"path": "/etc"}}]
    cluster.apply(bad)
    event = cluster.wait(lambda: [e for e in cluster.events(NS, "FailedMount") if "hostPath" in e["message"]], 30)
    assert "refused" in event[0]["message"]
    [pod] = job_pods(cluster, "host")
    assert pod["status"]["phase"] == "Pending" and "running" not in pod["status"]["containerStatuses"][0]["state"]


def condition_false(cluster, pods: list[dict], type_: str) -> dict | None:
    for pod in pods:
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c["type"] == type_ and c["status"] == "False":
                return c
    return None


def test_read_only_root_allows_writes_only_to_mounted_paths(cluster):
    before = Path("/proc/self/mountinfo").read_text()
    code = ("import json, os\n"
            "out = {}\n"
            "for path in ['/etc/fakekube-escape', '/work/main-escape', '/workspace/out/ok', '/tmp/ok', '/usr/escape']:\n"
            "    try:\n"
            "        os.makedirs(os.path.dirname(path), exist_ok=True); open(path, 'w').write('x'); out[path] = 'written'\n"
            "    except OSError as exc:\n"
            "        out[path] = exc.strerror\n"
            "open('/workspace/out/report.json', 'w').write(json.dumps(out))\n")
    manifest = job("rofs", code, claim=None)
    pod = manifest["spec"]["template"]["spec"]
    pod["containers"][0]["securityContext"] = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                               "capabilities": {"drop": ["ALL"]}}
    pod["containers"][0]["volumeMounts"] = [{"name": "out", "mountPath": "/workspace/out"}, {"name": "tmp", "mountPath": "/tmp"}]
    pod["volumes"] = [{"name": "out", "persistentVolumeClaim": {"claimName": "out"}}, {"name": "tmp", "emptyDir": {}}]
    cluster.apply(pvc("out"), manifest)
    assert cluster.wait(lambda: finished(cluster, "rofs"), 30)["type"] == "Complete"
    report = json.loads((cluster.claim_dir(NS, "out") / "report.json").read_text())
    assert report == {"/etc/fakekube-escape": "Read-only file system", "/work/main-escape": "Read-only file system",
                      "/workspace/out/ok": "written", "/tmp/ok": "written", "/usr/escape": "Read-only file system"}
    for path in ("/etc/fakekube-escape", "/work/main-escape", "/workspace", "/usr/escape"):
        assert not Path(path).exists(), f"{path} leaked onto the host"
    assert Path("/proc/self/mountinfo").read_text() == before  # no mount leaked either


def test_an_indexed_job_gives_each_pod_its_index_and_a_dns_name(cluster):
    # index 0 listens on the rendezvous port; index 1 finds it by <job>-0.<service>, as torchrun does
    code = ("import os, socket, time\n"
            "i = int(os.environ['JOB_COMPLETION_INDEX'])\n"
            "if i == 0:\n"
            "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "    s.bind(('0.0.0.0', 29500)); s.listen(); c, _ = s.accept(); msg = c.recv(100).decode()\n"
            "else:\n"
            "    for _ in range(200):\n"
            "        try:\n"
            "            c = socket.create_connection(('pair-0.workers', 29500), timeout=1); break\n"
            "        except OSError:\n"
            "            time.sleep(0.05)\n"
            "    c.sendall(socket.gethostname().encode()); msg = 'sent'\n"
            "open(f'/work/out/{i}', 'w').write(f'{socket.gethostname()} {msg}')\n")
    manifest = job("pair", code, completionMode="Indexed", completions=2, parallelism=2)
    manifest["spec"]["template"]["spec"]["subdomain"] = "workers"
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "workers"},
               "spec": {"clusterIP": "None", "selector": {"batch.kubernetes.io/job-name": "pair"}}}
    cluster.apply(pvc("work"), service, manifest)
    assert cluster.wait(lambda: finished(cluster, "pair"), 30)["type"] == "Complete"
    claim = cluster.claim_dir(NS, "work")
    assert (claim / "0").read_text() == "pair-0 pair-1"
    assert (claim / "1").read_text() == "pair-1 sent"
    assert cluster.get("batch/v1", "Job", NS, "pair")["status"]["completedIndexes"] == "0-1"
    pods = sorted(job_pods(cluster, "pair"), key=lambda p: p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])
    assert [p["spec"]["hostname"] for p in pods] == ["pair-0", "pair-1"]
    assert [p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] for p in pods] == ["0", "1"]


def test_a_jobset_restarts_the_whole_group_when_a_worker_is_lost(cluster):
    code = ("import os, sys, time\n"
            "attempt = int(os.environ['ATTEMPT'])\n"
            "open(f\"/work/out/{os.environ['HOSTNAME']}-{attempt}\", 'w').write('up')\n"
            "time.sleep(60 if attempt == 0 else 0)\n")
    child = job("unused", code, env=[{"name": "ATTEMPT", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.labels['jobset.sigs.k8s.io/restart-attempt']"}}}],
        completionMode="Indexed", completions=1, parallelism=1)["spec"]
    jobset = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": "group"},
              "spec": {"failurePolicy": {"maxRestarts": 2, "rules": [
                  {"name": "config-error", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}]},
                       "successPolicy": {"operator": "All"}, "network": {"enableDNSHostnames": True, "subdomain": "grp"},
                       "replicatedJobs": [{"name": "node", "replicas": 2, "template": {"spec": child}}]}}
    cluster.apply(pvc("work"), jobset)
    claim = cluster.claim_dir(NS, "work")
    cluster.wait(lambda: claim.is_dir() and {"group-node-0-0-0", "group-node-1-0-0"} <= {p.name for p in claim.iterdir()}, 30)
    assert cluster.get("v1", "Service", NS, "grp")["spec"]["clusterIP"] == "None"  # DNS for the pods
    victim = next(p for p in cluster.pods(NS) if p["spec"]["hostname"] == "group-node-1-0")
    survivor = next(p for p in cluster.pods(NS) if p["spec"]["hostname"] == "group-node-0-0")
    survivor_pid = cluster.kubelet.pids(NS, survivor["metadata"]["name"])["main"]
    cluster.kill_pod(NS, victim["metadata"]["name"])
    done = cluster.wait(lambda: cluster.condition("jobset.x-k8s.io/v1alpha2", "JobSet", NS, "group", "Completed"), 60)
    assert done["reason"] == "AllJobsCompleted"
    status = cluster.get("jobset.x-k8s.io/v1alpha2", "JobSet", NS, "group")["status"]
    assert status["restarts"] == 1 and status["restartsCountTowardsMax"] == 1
    assert {"group-node-0-0-1", "group-node-1-0-1"} <= {p.name for p in claim.iterdir()}  # both ran again
    assert not pid_alive(survivor_pid)  # the healthy worker of the first attempt was stopped too
    jobs = cluster.fake.list("batch/v1", "Job", NS)["items"]
    assert {j["metadata"]["labels"]["jobset.sigs.k8s.io/restart-attempt"] for j in jobs} == {"1"}


def test_a_lost_pod_takes_every_process_with_it_even_one_in_a_session_of_its_own(cluster):
    """kill_pod is a lost node: a container's processes all die, as when a runtime kills the
    container's cgroup, including a child started with setsid (torchrun starts each worker so)."""
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
            "open('/work/out/child', 'w').write(str(child.pid))\n"
            "time.sleep(600)\n")
    cluster.apply(pvc("work"), job("lost", code))
    marker = cluster.wait(lambda: (cluster.claim_dir(NS, "work") / "child").exists() and cluster.claim_dir(NS, "work") / "child", 30)
    [pod] = job_pods(cluster, "lost")
    main = cluster.kubelet.pids(NS, pod["metadata"]["name"])["main"]
    child = int(cluster.wait(lambda: marker.read_text(), 5))  # the pid as the host sees it (no pid namespace)
    assert os.getpgid(child) != os.getpgid(main) and pid_alive(child)
    cluster.kill_pod(NS, pod["metadata"]["name"])
    failed = cluster.wait(lambda: finished(cluster, "lost"), 30)
    assert failed["type"] == "Failed"
    cluster.wait(lambda: not pid_alive(child), 10, "the setsid child survived its pod")
    assert not pid_alive(main)


def deployment(name: str, version: str, ready_path: str = "/", deadline: int = 600) -> dict:
    code = (f"import http.server, os, pathlib; pathlib.Path('/srv/version').write_text('{version}'); os.chdir('/srv');"
            "http.server.test(HandlerClass=http.server.SimpleHTTPRequestHandler, port=8000, bind='0.0.0.0')")
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "progressDeadlineSeconds": deadline, "selector": {"matchLabels": {"app": name}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {
                         "containers": [{"name": "server", "image": f"server:{version}", "command": [PY, "-c", code],
                                         "ports": [{"name": "http", "containerPort": 8000}],
                                         "readinessProbe": {"httpGet": {"path": ready_path, "port": "http"}, "periodSeconds": 1},
                                         "volumeMounts": [{"name": "srv", "mountPath": "/srv"}]}],
                         "volumes": [{"name": "srv", "emptyDir": {}}]}}}}


def test_a_deployment_goes_ready_and_a_bad_rollout_exceeds_its_deadline_while_the_old_pod_serves(cluster):
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
    cluster.apply(service, deployment("web", "v1", deadline=3))
    status = cluster.wait(lambda: (cluster.get("apps/v1", "Deployment", NS, "web").get("status") or {}).get("availableReplicas")
                          and cluster.get("apps/v1", "Deployment", NS, "web")["status"], 30)
    assert status["readyReplicas"] == 1 and status["updatedReplicas"] == 1 and status["observedGeneration"] == 1
    assert cluster.wait(lambda: condition(cluster, "Deployment", "web", "Progressing", "apps/v1"), 10)["reason"] in (
        "NewReplicaSetAvailable", "ReplicaSetUpdated")
    url = cluster.service_url(NS, "web", "http")
    assert urllib.request.urlopen(f"{url}/version", timeout=5).read() == b"v1"

    # v2 listens on the same containerPort (its own network), but its readiness never passes.
    d = cluster.get("apps/v1", "Deployment", NS, "web")
    d["spec"] = deployment("web", "v2", ready_path="/never-ready", deadline=3)["spec"]
    cluster.fake.update(d)
    exceeded = cluster.wait(lambda: next((c for c in (cluster.get("apps/v1", "Deployment", NS, "web").get("status") or {})
                                          .get("conditions", []) if c["type"] == "Progressing" and c["status"] == "False"),
                                         None), 30)
    assert exceeded["reason"] == "ProgressDeadlineExceeded" and "has timed out progressing" in exceeded["message"]
    pods = cluster.pods(NS, "app=web")
    assert len(pods) == 2 and {p["spec"]["containers"][0]["image"] for p in pods} == {"server:v1", "server:v2"}
    new = next(p for p in pods if p["spec"]["containers"][0]["image"] == "server:v2")
    assert new["status"]["containerStatuses"][0]["state"].get("running")  # it runs, but is not ready
    assert new["status"]["containerStatuses"][0]["ready"] is False
    host, port = cluster.pod_address(NS, new["metadata"]["name"], 8000)
    assert urllib.request.urlopen(f"http://{host}:{port}/version", timeout=5).read() == b"v2"  # port 8000 twice, no clash
    for _ in range(3):  # every request through the Service still reaches the old, ready pod
        assert urllib.request.urlopen(f"{url}/version", timeout=5).read() == b"v1"
    status = cluster.get("apps/v1", "Deployment", NS, "web")["status"]
    assert status["availableReplicas"] == 1 and status["updatedReplicas"] == 1 and status["replicas"] == 2


def test_deleting_a_pod_sends_sigterm_then_sigkill_after_the_grace_period(cluster):
    code = ("import signal, time\n"
            "def term(*_): open('/work/out/term', 'w').write('got SIGTERM')\n"
            "signal.signal(signal.SIGTERM, term)\n"
            "open('/work/out/up', 'w').write('1')\n"
            "while True: time.sleep(0.1)\n")
    cluster.apply(pvc("work"), job("stubborn", code, grace=1))
    claim = cluster.wait(lambda: (cluster.claim_dir(NS, "work") / "up").exists() and cluster.claim_dir(NS, "work"), 30)
    [pod] = job_pods(cluster, "stubborn")
    pid = cluster.kubelet.pids(NS, pod["metadata"]["name"])["main"]
    cluster.fake.delete("batch/v1", "Job", NS, "stubborn")  # the garbage collector deletes its pod gracefully
    marked = cluster.get("v1", "Pod", NS, pod["metadata"]["name"])
    assert marked is not None and marked["metadata"]["deletionGracePeriodSeconds"] == 1
    cluster.wait(lambda: cluster.get("v1", "Pod", NS, pod["metadata"]["name"]) is None, 30)
    assert (claim / "term").read_text() == "got SIGTERM"  # it was asked first...
    assert not pid_alive(pid)  # ...and killed when it ignored the request


def test_kubectl_get_pods_and_logs(cluster, tmp_path):
    if not KUBECTL.exists():
        pytest.fail(f"{KUBECTL} is missing: run 'make tools'")
    cluster.apply(job("talk", "print('line one'); print('line two')", claim=None))
    cluster.wait(lambda: finished(cluster, "talk"), 30)
    [pod] = job_pods(cluster, "talk")
    name = pod["metadata"]["name"]
    config = cluster.write_kubeconfig(tmp_path / "kubeconfig")

    def kubectl(*args: str) -> str:
        proc = subprocess.run([str(KUBECTL), "--kubeconfig", str(config), *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    listed = json.loads(kubectl("get", "pods", "-o", "json"))
    assert [(p["metadata"]["name"], p["status"]["phase"]) for p in listed["items"]] == [(name, "Succeeded")]
    assert "Completed" in kubectl("get", "pods")  # the STATUS column reads the terminated reason
    assert kubectl("logs", name) == "line one\nline two\n"
    assert kubectl("logs", name, "-c", "main", "--tail=1") == "line two\n"
    assert kubectl("logs", "-f", name) == "line one\nline two\n"  # follow ends with the container


def test_logs_of_a_restarted_container_and_the_previous_one(cluster):
    # restartPolicy OnFailure: the kubelet restarts the container in place; backoffLimit counts restarts
    code = ("import os, sys\n"
            "p = '/work/out/runs'; n = int(open(p).read()) if os.path.exists(p) else 0\n"
            "open(p, 'w').write(str(n + 1)); print(f'run {n}'); sys.exit(0 if n else 3)\n")
    manifest = job("again", code, backoff=3)
    manifest["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    cluster.apply(pvc("work"), manifest)
    assert cluster.wait(lambda: finished(cluster, "again"), 30)["type"] == "Complete"
    [pod] = job_pods(cluster, "again")
    cs = pod["status"]["containerStatuses"][0]
    assert cs["restartCount"] == 1 and cs["lastState"]["terminated"]["exitCode"] == 3
    base = f"{cluster.url}/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}/log"
    assert urllib.request.urlopen(base).read() == b"run 1\n"
    assert urllib.request.urlopen(base + "?previous=true").read() == b"run 0\n"
