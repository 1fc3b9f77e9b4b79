"""`ftops reconcile`, `ftops controller`: running the reconciler, once or forever, and the
cluster wiring around it (leader election, the FineTune CR mirror, the serving side)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from controller.commands.status_commands import _table
from controller.settings import require_repo, uses


def _controller_args(p: argparse.ArgumentParser) -> None:
    """--home, --repo, --backend, --kubeconfig and --operator-config are global settings
    (controller.settings: flag, FTOPS_* variable or config file); a repository is required."""
    uses(p, "home", "repo", "backend", "kubeconfig", "operator_config")
    p.add_argument("--rev", default="main", help="branch, tag or commit to reconcile (default: main)")
    p.add_argument("--max-concurrent-runs", type=int, default=2)
    p.add_argument("--max-runs-per-owner", type=int, default=1)
    p.add_argument("--allow-delete-all", action="store_true", help="confirm a commit that deletes every spec")
    p.add_argument("--allowed-signers", help="signed-commit mode: a git allowed-signers file (SSH keys)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="where local runs train")
    _notify_args(p)


def _notify_args(p: argparse.ArgumentParser) -> None:
    """Reporting each spec's outcome back to the merged commit (controller.notify, docs/ci.md)."""
    g = p.add_argument_group("reporting back to the forge (a commit status per spec)")
    g.add_argument("--notify", choices=("github", "webhook"), help="report each spec's outcome on the reconciled commit")
    g.add_argument("--github-repository", default=os.environ.get("GITHUB_REPOSITORY"),
                   help="OWNER/NAME of the GitHub repository (default: $GITHUB_REPOSITORY)")
    g.add_argument("--github-token-env", default="GITHUB_TOKEN",
                   help="environment variable holding the token (default: GITHUB_TOKEN; in a cluster, from a Secret)")
    g.add_argument("--github-token-file", help="file holding the token (a mounted Secret), instead of the variable")
    g.add_argument("--github-api-url", default=os.environ.get("GITHUB_API_URL", "https://api.github.com"),
                   help="GitHub's REST API (GitHub Enterprise Server: https://HOST/api/v3)")
    g.add_argument("--github-mode", choices=("statuses", "checks"), default="statuses",
                   help="commit statuses (any token that may write statuses) or check runs (a GitHub App's token)")
    g.add_argument("--notify-url", help="--notify webhook: the URL that receives each report as JSON")
    g.add_argument("--webhook-secret-env", help="environment variable holding the webhook's HMAC secret")
    g.add_argument("--notify-target-url", help="link shown on each status (a dashboard, the controller's UI)")


def _notifier(args: argparse.Namespace):
    """The notifier the flags ask for (None: report nowhere). A missing token or URL is a usage
    error raised before the first pass, not a failure on the first report."""
    from controller.errors import FtopsError

    kind = getattr(args, "notify", None)
    if kind is None:
        return None
    if kind == "webhook":
        from controller.notify import WebhookNotifier

        if not args.notify_url:
            raise FtopsError("--notify webhook needs --notify-url URL")
        secret = os.environ.get(args.webhook_secret_env, "") if args.webhook_secret_env else None
        if args.webhook_secret_env and not secret:
            raise FtopsError(f"--webhook-secret-env {args.webhook_secret_env}: the variable is not set")
        return WebhookNotifier(args.notify_url, secret)
    from controller.notify import GitHubNotifier

    if not args.github_repository:
        raise FtopsError("--notify github needs --github-repository OWNER/NAME (or $GITHUB_REPOSITORY)")
    if args.github_token_file:
        try:
            token = Path(args.github_token_file).read_text().strip()
        except OSError as exc:
            raise FtopsError(f"--github-token-file {args.github_token_file}: {exc.strerror}") from None
    else:
        token = os.environ.get(args.github_token_env, "")
        if not token:
            raise FtopsError(f"--notify github: ${args.github_token_env} is empty; export the token there "
                             "(or give --github-token-file)")
    return GitHubNotifier(args.github_repository, token, api_url=args.github_api_url, mode=args.github_mode,
                          target_url=args.notify_target_url)


def register(sub: argparse._SubParsersAction) -> None:
    reconcile = sub.add_parser("reconcile", help="run reconcile passes against a GitOps repo")
    _controller_args(reconcile)
    reconcile.add_argument("--once", action="store_true", help="one pass, then exit (default)")
    reconcile.add_argument("--until-settled", type=float, metavar="SECONDS",
                           help="repeat passes until nothing is waiting, or SECONDS pass")
    reconcile.set_defaults(func=_needs_repo("reconcile", cmd_reconcile))

    ctl = sub.add_parser("controller", help="reconcile forever, polling git (and watching a local repo with --watch)")
    _controller_args(ctl)
    ctl.add_argument("--interval", type=float, default=30, help="seconds between polls (default: 30)")
    ctl.add_argument("--watch", action="store_true", help="also reconcile as soon as a local repo's refs change")
    ctl.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    ctl.add_argument("--metrics-host", default="127.0.0.1", help="address for /metrics (0.0.0.0 in a pod)")
    ctl.add_argument("--leader-elect", action="store_true", help="kubernetes: act only while holding the Lease")
    ctl.add_argument("--lease-name", default="ftops-controller")
    ctl.add_argument("--lease-namespace", help="namespace of the Lease (default: $POD_NAMESPACE)")
    ctl.add_argument("--lease-duration", type=float, default=15)
    ctl.add_argument("--renew-deadline", type=float, default=10)
    ctl.add_argument("--retry-period", type=float, default=2)
    ctl.add_argument("--watch-namespace", action="append", default=[], help="restrict to these namespaces (repeatable)")
    ctl.add_argument("--mirror-finetunes", action="store_true", help="mirror specs into FineTune CRs with their status")
    ctl.set_defaults(func=_needs_repo("controller", cmd_controller))


def _needs_repo(command: str, func):
    """`func`, once the global settings name a repository (flag, FTOPS_REPO or config file)."""
    def run(args: argparse.Namespace) -> int:
        require_repo(args, command)
        return func(args)

    return run


# ----------------------------------------------------------------------------- running


@dataclass
class Cluster:
    """What cluster mode adds around the reconciler: the elector (fence), the CR mirror, the
    artifact store in object storage, and evaluation as Jobs."""

    backend: object
    elector: object | None = None
    mirror: object | None = None
    store: object | None = None
    evaluator: object | None = None


def cluster_store(operator):
    """The operator's artifact store (cluster.artifactStore): where runs, reports and the pods'
    inputs live. Credentials come from the controller's environment (the chart fills it from a
    Secret), never from the config."""
    from controller.artifacts import open_store, store_options

    cfg = operator.cluster.artifact_store
    return open_store(cfg.uri, store_options(cfg.endpoint_url, cfg.region))


def _cluster(args: argparse.Namespace, operator, stop: threading.Event) -> Cluster:
    import os

    from controller.backends.kubernetes import KubernetesBackend, load_api_client
    from controller.backends.kubernetes_identity import export_image_digest

    api = load_api_client(args.kubeconfig)
    export_image_digest(KubernetesBackend(api))  # sets FTOPS_IMAGE_DIGEST, recorded in the ledger
    elector = None
    if getattr(args, "leader_elect", False):
        from controller.backends.kubernetes_lease import LeaderElector

        elector = LeaderElector(api, namespace=args.lease_namespace or os.environ.get("POD_NAMESPACE", "default"),
                                name=args.lease_name, lease_duration=args.lease_duration,
                                renew_deadline=args.renew_deadline, retry_period=args.retry_period)
        threading.Thread(target=elector.run, args=(stop, lambda: None, lambda: None), daemon=True).start()
    namespaces = getattr(args, "watch_namespace", None) or None
    store = cluster_store(operator)
    backend = KubernetesBackend(api, namespaces=namespaces, fence=elector.ensure_leader if elector else None,
                                operator=operator, store=store)
    from controller.backends.kubernetes_eval import KubernetesEvaluator

    evaluator = KubernetesEvaluator(backend, store, operator)
    mirror = None
    if getattr(args, "mirror_finetunes", False):
        from controller.backends.kubernetes_crd import FineTuneMirror

        mirror = FineTuneMirror(backend, lambda ft: operator.tenancy.namespace_for(ft.metadata.owner), namespaces=namespaces)
    return Cluster(backend, elector, mirror, store, evaluator)


def build_reconciler(args: argparse.Namespace, stop: threading.Event | None = None, metrics=None):
    from controller.catalog import load_operator_config
    from controller.home import Home
    from controller.ledger import Ledger
    from controller.reconcile import ControllerConfig, Reconciler

    config = ControllerConfig(
        repo=args.repo, home=Path(args.home), rev=args.rev, operator_config=args.operator_config,
        max_concurrent_runs=args.max_concurrent_runs, max_runs_per_owner=args.max_runs_per_owner,
        allow_delete_all=args.allow_delete_all,
        allowed_signers=Path(args.allowed_signers) if args.allowed_signers else None, device=args.device,
    )
    cluster = None
    operator = load_operator_config(args.operator_config)
    if args.backend == "kubernetes":
        config = replace(config, store=operator.cluster.artifact_store.uri)
        cluster = _cluster(args, operator, stop or threading.Event())
        backend = cluster.backend
    else:
        from controller.backends.local import LocalBackend

        backend = LocalBackend(Path(args.home) / "runs")
    fence = cluster.elector.ensure_leader if cluster is not None and cluster.elector is not None else None
    ledger = Ledger(Home(Path(args.home)).ledger, before_write=fence)
    reconciler = Reconciler(config, _by_method(args, config, operator, backend, cluster), ledger=ledger,
                            deployer=_deployer(args, backend, cluster), metrics=metrics,
                            notifier=_notifier(args), evaluator=cluster.evaluator if cluster is not None else None,
                            store=cluster.store if cluster is not None else None)
    return reconciler, cluster


def _by_method(args: argparse.Namespace, config, operator, backend, cluster: Cluster | None):
    """The reconciler's one Backend: specs of method api train at their provider (the api backend,
    which writes their manifests to the same artifact store), every other spec on `backend`
    (controller.backends.by_method says why this is per spec, not a flag)."""
    from controller.artifacts import open_store
    from controller.backends.api_finetune import ApiFineTuneBackend
    from controller.backends.by_method import ByMethod
    from controller.home import Home

    store = cluster.store if cluster is not None else open_store(config.store or str(Home(Path(args.home)).store))
    return ByMethod(backend, ApiFineTuneBackend(Path(args.home) / "api", store, operator))


def _deployer(args: argparse.Namespace, backend, cluster: Cluster | None = None):
    """Who runs the serving side: server processes here, or Deployments in the cluster (whose
    pods read the run from the artifact store)."""
    from controller.catalog import load_operator_config
    from controller.home import Home

    store = Home(Path(args.home)).store
    if args.backend == "kubernetes":
        from controller.serve.kube import KubernetesServing

        return KubernetesServing(backend, load_operator_config(args.operator_config), store,
                                 artifacts=cluster.store if cluster is not None else None)
    from controller.serve.api_deploy import ApiServing, ByMethod
    from controller.serve.deploy import LocalServing

    # a spec of method api serves through the gateway in front of its provider (controller.serve.api_deploy)
    return ByMethod(LocalServing(store), ApiServing(store, load_operator_config(args.operator_config)))


def cmd_reconcile(args: argparse.Namespace) -> int:
    from controller.observability import configure_logging

    configure_logging("WARNING")
    reconciler, _ = build_reconciler(args)
    deadline = time.monotonic() + (args.until_settled or 0)
    while True:
        result = reconciler.reconcile_once()
        if not args.until_settled or result.requeue_after is None or time.monotonic() > deadline:
            break
        time.sleep(min(result.requeue_after, 2.0))
    print(_table(result.statuses))
    if result.error:
        print(f"error: {result.error}", file=sys.stderr)
        return 1
    return 0


def cmd_controller(args: argparse.Namespace) -> int:
    from controller.errors import TemporaryError
    from controller.observability import Metrics, configure_logging

    configure_logging()
    stop = threading.Event()
    metrics = Metrics()
    reconciler, cluster = build_reconciler(args, stop, metrics)
    if args.metrics_port:
        metrics.serve(args.metrics_port, args.metrics_host)
    sync = ClusterSync(cluster.mirror) if cluster is not None and cluster.mirror is not None else None
    wake = threading.Event()
    observer = _watch(Path(args.repo), wake) if args.watch else None
    try:
        while True:
            delay = args.interval
            if cluster is None or cluster.elector is None or cluster.elector.is_leader():
                started = time.monotonic()
                try:
                    result = reconciler.reconcile_once()
                    if sync is not None:
                        sync(reconciler, result)
                except TemporaryError as exc:  # NotLeader: lost the lease mid-pass; wait to lead again
                    reconciler_log(f"pass stopped: {exc}")
                    result = None
                if result is not None:
                    waiting = sum(1 for s in result.statuses.values() if s.phase not in ("Ready", "Stalled"))
                    metrics.observe_pass(time.monotonic() - started, result.statuses, result.error, waiting)
                    if result.requeue_after is not None:
                        delay = min(args.interval, result.requeue_after)
            wake.wait(timeout=max(0.2, delay))
            wake.clear()
    except KeyboardInterrupt:
        return 0
    finally:
        stop.set()
        if observer is not None:
            observer.stop()


def reconciler_log(message: str) -> None:
    import logging

    logging.getLogger("ftops.controller").warning(json.dumps({"event": "controller", "message": message}))


class ClusterSync:
    """After each pass in cluster mode: mirror the valid specs into FineTune CRs, write each
    changed status through /status, and record an Event for every condition that changed."""

    WARNING_REASONS = {"GateFailed", "RolledBack", "TrainingFailed", "EvaluationFailed", "SpecInvalid", "Retrying"}

    def __init__(self, mirror) -> None:
        self.mirror = mirror
        self.written: dict[str, object] = {}

    def __call__(self, reconciler, result) -> None:
        from controller.source import load_specs_at

        if result.commit is None:
            return
        specs = load_specs_at(reconciler.source, result.commit, reconciler.cache, sorted(reconciler.operator.gpus))
        valid = [s.loaded.spec for s in specs.values() if s.loaded.spec is not None]
        self.mirror.sync(valid)
        for ft in valid:
            status = result.statuses.get(ft.metadata.name)
            if status is None or self.written.get(ft.metadata.name) == status:
                continue
            namespace = reconciler.operator.tenancy.namespace_for(ft.metadata.owner)
            previous = self.written.get(ft.metadata.name)
            self.mirror.write_status(namespace, ft.metadata.name, status)
            for c in status.conditions:
                before = previous.condition(c.type) if previous is not None else None
                if before is None or (before.status, before.reason) != (c.status, c.reason):
                    kind = "Warning" if c.reason in self.WARNING_REASONS or (c.type == "Stalled" and c.status == "True") else "Normal"
                    self.mirror.record_event(namespace, ft.metadata.name, c.reason, f"{c.type}={c.status}: {c.message}", kind)
            self.written[ft.metadata.name] = status


def _watch(repo: Path, wake: threading.Event):
    """Wake the loop when a local repository's refs or HEAD change (a commit, a checkout)."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    git_dir = repo / ".git" if (repo / ".git").is_dir() else repo

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event) -> None:
            path = str(getattr(event, "dest_path", "") or event.src_path)
            if "/refs/" in path or path.endswith(("HEAD", "packed-refs")):
                wake.set()

    observer = Observer()
    observer.schedule(Handler(), str(git_dir), recursive=True)
    observer.start()
    return observer
