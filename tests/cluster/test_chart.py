"""charts/ftops: `helm lint --strict` and `helm template` with several value sets, every rendered
object validated with kubernetes-validate (strict), least-privilege RBAC, the controller's flags,
secrets only by reference, the operator config the controller will load, and values that must
be refused (by values.schema.json or by a template `fail`)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from cluster_helpers import CHART, ROOT
from controller.backends.kubernetes_crd import crd
from controller.catalog import load_operator_config

VALUES = Path(__file__).parent / "values"
INVALID = Path(__file__).parent / "invalid"
SETS = sorted(p.stem for p in VALUES.glob("*.yaml"))
K8S_VERSION = "1.30"
NS = "ftops-system"


def helm_run(helm: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)


_rendered: dict[str, list[dict]] = {}


def render(helm: str, name: str) -> list[dict]:
    if name not in _rendered:
        out = helm_run(helm, "template", "ftops", str(CHART), "-n", NS, "--include-crds", "-f", str(VALUES / f"{name}.yaml"))
        assert out.returncode == 0, out.stderr
        _rendered[name] = [d for d in yaml.safe_load_all(out.stdout) if d]
    return _rendered[name]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def controller_container(docs: list[dict]) -> dict:
    (deploy,) = by_kind(docs, "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return container


def test_value_sets_exist():
    assert set(SETS) >= {"default", "leader-election", "monitoring", "s3-remote"}


@pytest.mark.parametrize("name", SETS)
def test_helm_lint_strict(helm, name):
    out = helm_run(helm, "lint", "--strict", str(CHART), "-f", str(VALUES / f"{name}.yaml"))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", SETS)
def test_every_rendered_object_is_valid_kubernetes(helm, name):
    docs = render(helm, name)
    for doc in docs:
        if doc["kind"] in ("ServiceMonitor", "ClusterTrainingRuntime"):  # not built-in kinds; checked in their own tests
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"].get("namespace"), f"{doc['kind']}/{doc['metadata']['name']} has no namespace"
    (shipped,) = by_kind(docs, "CustomResourceDefinition")
    assert shipped == crd()  # the chart installs exactly the CRD generated from the models


@pytest.mark.parametrize("name", SETS)
def test_the_controller_container(helm, name):
    docs = render(helm, name)
    values = yaml.safe_load((VALUES / f"{name}.yaml").read_text())
    c = controller_container(docs)
    args = c["args"]
    assert c["command"] == ["ftops"] and args[0] == "controller"
    assert f"--repo={values['git']['repo']}" in args and "--backend=kubernetes" in args
    assert f"--rev={values['git'].get('rev', 'main')}" in args
    assert f"--interval={values['git'].get('interval', 60)}" in args
    assert ("--leader-elect" in args) == bool(values.get("leaderElection", {}).get("enabled"))
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # no literal credential anywhere: every value from a Secret is a reference
    for e in c["env"]:
        assert not any(word in e["name"].upper() for word in ("SECRET", "PASSWORD", "TOKEN")) or "valueFrom" in e
    assert not by_kind(docs, "Secret")
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/var/lib/ftops", "/var/lib/ftops/checkpoints", "/etc/ftops/config", "/tmp"} <= mounts
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {p["metadata"]["name"] for p in by_kind(docs, "PersistentVolumeClaim")} == {
        "ftops-ledger", "ftops-checkpoints"}


def test_default_is_one_replica_that_never_overlaps(helm):
    (deploy,) = by_kind(render(helm, "default"), "Deployment")
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"]["type"] == "Recreate"
    assert by_kind(render(helm, "default"), "ServiceMonitor") == []
    assert by_kind(render(helm, "default"), "NetworkPolicy") == []


def test_leader_election_values(helm):
    docs = render(helm, "leader-election")
    (deploy,) = by_kind(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 2 and deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    args = controller_container(docs)["args"]
    for flag in ("--lease-name=ftops", f"--lease-namespace={NS}", "--lease-duration=20", "--renew-deadline=12",
                 "--retry-period=3"):
        assert flag in args
    c = controller_container(docs)
    digest = "sha256:" + "0123456789abcdef" * 4
    assert c["image"] == f"registry.example.com/ftops/controller:0.1.0@{digest}"
    assert {e["name"]: e.get("value") for e in c["env"]}["FTOPS_IMAGE_DIGEST"] == digest
    assert all(p["spec"]["accessModes"] == ["ReadWriteMany"] for p in by_kind(docs, "PersistentVolumeClaim"))


def test_rbac_is_least_privilege(helm):
    for name in SETS:
        docs = render(helm, name)
        roles = by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
        for role in roles:
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
                assert "secrets" not in rule["resources"], "the controller never reads Secrets"
                if "pods" in rule["resources"] or "pods/log" in rule["resources"]:
                    assert set(rule["verbs"]) <= {"get", "list", "watch"}
        self_role = next(r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("-self"))
        lease_rules = [r for r in self_role["rules"] if r["resources"] == ["leases"]]
        assert {tuple(r["verbs"]) for r in lease_rules} == {("create",), ("get", "update")}
        assert [r["resourceNames"] for r in lease_rules if "update" in r["verbs"]] == [["ftops"]]

    cluster_rules = by_kind(render(helm, "default"), "ClusterRole")[0]["rules"]
    granted = {(g, r): set(rule["verbs"]) for rule in cluster_rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted[("ftops.dev", "finetunes/status")] == {"get", "update", "patch"}
    assert "create" in granted[("batch", "jobs")] and "delete" in granted[("apps", "deployments")]
    assert granted[("", "events")] == {"create", "patch"}
    assert ("trainer.kubeflow.org", "trainjobs") not in granted  # only when asked for
    assert ("jobset.x-k8s.io", "jobsets") not in granted
    assert "delete" in granted[("", "persistentvolumeclaims")]  # cancel removes a run's checkpoint claim

    docs = render(helm, "s3-remote")
    assert by_kind(docs, "ClusterRole") == [] and by_kind(docs, "ClusterRoleBinding") == []
    tenant_roles = [r for r in by_kind(docs, "Role") if not r["metadata"]["name"].endswith("-self")]
    assert sorted(r["metadata"]["namespace"] for r in tenant_roles) == ["ftops-legal", "ftops-support"]
    bindings = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["namespace"] != NS]
    assert all(b["subjects"] == [{"kind": "ServiceAccount", "name": "ftops", "namespace": NS}] for b in bindings)
    assert any(("trainer.kubeflow.org" in r["apiGroups"]) for r in tenant_roles[0]["rules"])
    args = controller_container(docs)["args"]
    assert "--watch-namespace=ftops-support" in args and "--watch-namespace=ftops-legal" in args


def test_s3_remote_and_git_ssh_credentials_are_references(helm, tmp_path):
    docs = render(helm, "s3-remote")
    (cm,) = by_kind(docs, "ConfigMap")
    assert "[core]\n    remote = s3store" in cm["data"]["config"]
    assert "url = s3://ml-datasets/ftops" in cm["data"]["config"]
    assert "endpointurl = https://minio.example.com" in cm["data"]["config"]
    c = controller_container(docs)
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "ftops-dvc", "key": "access-key-id"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "ftops-dvc", "key": "secret-access-key"}
    assert env["DVC_GLOBAL_CONFIG_DIR"]["value"] == "/etc/ftops/dvc"
    assert "/etc/ftops/git/ssh-privatekey" in env["GIT_SSH_COMMAND"]["value"]
    (deploy,) = by_kind(docs, "Deployment")
    git_volume = next(v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == "git-credentials")
    assert git_volume["secret"]["secretName"] == "ftops-git"

    # the operator config in the ConfigMap is what the controller loads and validates
    path = tmp_path / "operator.yaml"
    path.write_text(cm["data"]["operator.yaml"])
    op = load_operator_config(path)
    assert op.tenancy.namespace_for("support") == "ftops-support"
    assert op.gpus["l40s"].usd_per_hour == 1.2 and "a100-80gb" in op.gpus  # merged over the defaults
    assert op.cluster.kueue_queue == "gpu-queue"
    assert op.cluster.image == "ghcr.io/ftops/trainer:0.1.0"
    # the artifact store: the pods' credentials are references to the tenant namespaces' Secret
    store = op.cluster.artifact_store
    assert (store.uri, store.endpoint_url, store.region) == ("s3://ml-artifacts/ftops", "https://minio.example.com", "eu-west-1")
    assert {(s.env, s.secret, s.key) for s in store.credentials} == {
        ("AWS_ACCESS_KEY_ID", "ftops-store", "access-key-id"), ("AWS_SECRET_ACCESS_KEY", "ftops-store", "secret-access-key")}
    assert op.cluster.model_cache.hf_token is not None and op.cluster.model_cache.hf_token.secret == "hf-token"
    # the controller's own store keys, from its Secret in the release namespace
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == "https://minio.example.com"
    assert "ftops-store" in {e["valueFrom"].get("secretKeyRef", {}).get("name") for e in c["env"] if "valueFrom" in e}


def test_the_training_runtime_is_valid_for_kubeflow_trainer(helm):
    """The ClusterTrainingRuntime TrainJobs refer to, checked by Kubeflow's published models (and
    its pod template by the Kubernetes schemas): the containers a TrainJob's runtime patch names
    (inputs, node) are the ones it has."""
    from controller.render import manifest_problems

    (runtime,) = by_kind(render(helm, "s3-remote"), "ClusterTrainingRuntime")
    assert manifest_problems(runtime) == []
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["inputs"] and [c["name"] for c in pod["containers"]] == ["node"]
    assert by_kind(render(helm, "default"), "ClusterTrainingRuntime") == []


def test_default_config_loads_and_has_no_dvc_remote(helm, tmp_path):
    docs = render(helm, "default")
    (cm,) = by_kind(docs, "ConfigMap")
    assert "config" not in cm["data"]
    path = tmp_path / "operator.yaml"
    path.write_text(cm["data"]["operator.yaml"])
    assert load_operator_config(path).cluster.image == "ghcr.io/ftops/trainer:0.1.0"
    controller = yaml.safe_load(cm["data"]["controller.yaml"])
    assert controller == {"repo": "https://git.example.com/ml/finetunes.git", "rev": "main", "intervalSeconds": 60,
                          "backend": "kubernetes", "leaderElection": False, "mirrorFineTunes": True,
                          "watchNamespaces": [], "dvcRemote": ""}


def test_monitoring_values(helm):
    docs = render(helm, "monitoring")
    (sm,) = by_kind(docs, "ServiceMonitor")
    (svc,) = by_kind(docs, "Service")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [e["port"] for e in sm["spec"]["endpoints"]] == [p["name"] for p in svc["spec"]["ports"]] == ["metrics"]
    (np,) = by_kind(docs, "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert np["spec"]["ingress"][0]["ports"] == [{"port": 8080, "protocol": "TCP"}]
    egress_ports = {p["port"] for rule in np["spec"]["egress"] for p in rule["ports"]}
    assert {53, 443, 6443, 22} <= egress_ports
    assert np["spec"]["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.0.0.0/8"}}]
    (deploy,) = by_kind(docs, "Deployment")
    assert np["spec"]["podSelector"]["matchLabels"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("bad", sorted(p.name for p in INVALID.glob("*.yaml")))
def test_invalid_values_are_rejected_by_the_schema(helm, bad):
    out = helm_run(helm, "template", "ftops", str(CHART), "-f", str(INVALID / bad))
    assert out.returncode != 0, f"{bad} was accepted"
    assert "values don't meet the specifications of the schema" in out.stderr, out.stderr


@pytest.mark.parametrize("sets,message", [
    (["replicaCount=2", "leaderElection.enabled=true"], "persistence.ledger.accessModes must include ReadWriteMany"),
    (["leaderElection.enabled=true", "leaderElection.renewDeadline=20"], "retryPeriod < renewDeadline < leaseDuration"),
    (["serviceMonitor.enabled=true", "metrics.enabled=false"], "serviceMonitor.enabled needs metrics.enabled"),
])
def test_template_guards_refuse_unsafe_combinations(helm, sets, message):
    args = ["template", "ftops", str(CHART), "--set", "git.repo=https://git.example.com/x.git"]
    for s in sets:
        args += ["--set", s]
    out = helm_run(helm, *args)
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_docs_name_every_controller_flag_the_chart_passes(helm):
    """docs/cluster.md is where the chart and `ftops controller` agree on flag names."""
    doc = (ROOT / "docs" / "cluster.md").read_text()
    flags = set()
    for name in SETS:
        for arg in controller_container(render(helm, name))["args"][1:]:
            flags.add(arg.split("=", 1)[0])
    missing = sorted(f for f in flags if f"`{f}" not in doc)
    assert not missing, f"docs/cluster.md does not document {missing}"


@pytest.mark.parametrize("sets", [
    ["rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=platform-sa"],
    ["persistence.ledger.enabled=false", "persistence.checkpoints.existingClaim=shared-checkpoints"],
    ["metrics.enabled=false", "networkPolicy.enabled=true", "finetunes.mirror=false"],
], ids=["no-rbac", "bring-your-own-storage", "no-metrics"])
def test_switches_off_render_valid_objects(helm, sets):
    args = ["template", "ftops", str(CHART), "-n", NS, "--set", "git.repo=https://git.example.com/x.git"]
    for s in sets:
        args += ["--set", s]
    out = helm_run(helm, *args)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    args_ = pod["containers"][0]["args"]
    if "rbac.create=false" in sets:
        assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "Role") and not by_kind(docs, "ServiceAccount")
        assert pod["serviceAccountName"] == "platform-sa"
    if "persistence.ledger.enabled=false" in sets:
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["home"]
        assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == "shared-checkpoints"
        assert not by_kind(docs, "PersistentVolumeClaim")
    if "metrics.enabled=false" in sets:
        assert not any(a.startswith("--metrics") for a in args_) and "--mirror-finetunes" not in args_
        assert not by_kind(docs, "Service") and "ports" not in pod["containers"][0]
        (np,) = by_kind(docs, "NetworkPolicy")
        assert not np["spec"].get("ingress")  # nothing may connect in


def _controller_notifier(args: list[str], env: dict[str, str], monkeypatch):
    """The notifier `ftops controller` builds from the rendered args and the pod's environment."""
    from controller.cli import build_parser
    from controller.commands.reconcile_commands import _notifier

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return _notifier(build_parser().parse_args(args))


def test_notify_github_values_pass_the_flags_and_the_token_by_reference(helm, monkeypatch):
    """notify.* become the controller's reporting flags; the token reaches the pod only as a
    secretKeyRef, and the controller builds its GitHub notifier from exactly what is rendered."""
    docs = render(helm, "notify-github")
    c = controller_container(docs)
    notify_args = [a for a in c["args"] if a.startswith(("--notify", "--github", "--webhook"))]
    assert notify_args == ["--notify=github", "--notify-target-url=https://grafana.example.com/d/ftops",
                           "--github-repository=acme/fine-tunes", "--github-token-env=FTOPS_GITHUB_TOKEN",
                           "--github-mode=checks", "--github-api-url=https://github.example.com/api/v3"]
    env = {e["name"]: e for e in c["env"]}
    assert env["FTOPS_GITHUB_TOKEN"] == {"name": "FTOPS_GITHUB_TOKEN",
                                         "valueFrom": {"secretKeyRef": {"name": "ftops-github", "key": "app-token"}}}
    assert not by_kind(docs, "Secret")
    notifier = _controller_notifier(c["args"], {"FTOPS_GITHUB_TOKEN": "token-from-the-secret"}, monkeypatch)
    assert (type(notifier).__name__, notifier.repository, notifier.mode, notifier.api_url, notifier.target_url) == (
        "GitHubNotifier", "acme/fine-tunes", "checks", "https://github.example.com/api/v3", "https://grafana.example.com/d/ftops")
    assert notifier._headers["Authorization"] == "Bearer token-from-the-secret"

    default = controller_container(render(helm, "default"))
    assert not [a for a in default["args"] if a.startswith(("--notify", "--github", "--webhook"))]
    assert not {"FTOPS_GITHUB_TOKEN", "FTOPS_WEBHOOK_SECRET"} & {e["name"] for e in default["env"]}


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_notify_webhook_values(helm, monkeypatch, signed):
    args = ["template", "ftops", str(CHART), "-n", NS, "--set", "git.repo=https://git.example.com/x.git",
            "--set", "notify.kind=webhook", "--set", "notify.webhook.url=https://hooks.example.com/ftops?team=ml"]
    if signed:
        args += ["--set", "notify.webhook.secretRef.name=ftops-webhook", "--set", "notify.webhook.secretRef.key=hmac"]
    out = helm_run(helm, *args)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    (deploy,) = by_kind(docs, "Deployment")
    kubernetes_validate.validate(deploy, K8S_VERSION, strict=True)
    c = controller_container(docs)
    notify_args = [a for a in c["args"] if a.startswith(("--notify", "--github", "--webhook"))]
    assert notify_args == ["--notify=webhook", "--notify-url=https://hooks.example.com/ftops?team=ml"] + (
        ["--webhook-secret-env=FTOPS_WEBHOOK_SECRET"] if signed else [])
    env = {e["name"]: e for e in c["env"]}
    assert "FTOPS_GITHUB_TOKEN" not in env
    if signed:
        assert env["FTOPS_WEBHOOK_SECRET"]["valueFrom"] == {"secretKeyRef": {"name": "ftops-webhook", "key": "hmac"}}
    else:
        assert "FTOPS_WEBHOOK_SECRET" not in env
    notifier = _controller_notifier(c["args"], {"FTOPS_WEBHOOK_SECRET": "k3y"} if signed else {}, monkeypatch)
    assert (type(notifier).__name__, notifier.url, notifier.secret) == (
        "WebhookNotifier", "https://hooks.example.com/ftops?team=ml", b"k3y" if signed else None)
