"""`ftops serve`, `ftops deploy`, `ftops rollback`: the RAG + adapter server and its rollouts
(controller.serve). Heavy imports happen inside the command functions only.

    ftops serve --run RUN_DIR --spec SPEC_FILE [--corpus DIR] [--host H] [--port P]
    ftops serve --config serve.json            (what a serving pod and the local deploy step run)
    ftops deploy SPEC_FILE --run RUN_DIR [--store DIR]    promote a gated run (local backend)
    ftops rollback SPEC [--to RUN] [--store DIR] [--backend local|kubernetes]
                                                          back to an earlier run that passed its gate
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from controller import exitcodes
from controller.output import MACHINE, add_output_flag, dump, fmt
from controller.settings import uses


def _store(args: argparse.Namespace) -> str:
    """The artifact store: --store, $FTOPS_STORE, else the controller home's (`<home>/store`)."""
    from controller.home import Home

    return args.store or os.environ.get("FTOPS_STORE") or str(Home(Path(args.home)).store)


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve", help="Serve a finished run: OpenAI-compatible API with retrieval and citations.",
        description="Serve a run's model (base + adapter, with the chat template recorded in its manifest) behind "
                    "retrieval over the spec's corpus. Endpoints: POST /v1/chat/completions (stream: true for SSE), "
                    "GET /v1/models, /healthz, /readyz, /metrics.")
    serve.add_argument("--run", help="Run directory (<store>/<spec>/<run-id>, with manifest.json and model/).")
    serve.add_argument("--spec", help="The FineTune spec file (its serving block: corpus, retriever, topK, maxTokens).")
    serve.add_argument("--config", help="A serve.json instead of --run/--spec (what pods and the local deploy step use).")
    serve.add_argument("--corpus", help="Corpus folder (default: spec.serving.corpus, relative to the repository).")
    serve.add_argument("--retriever", choices=("bm25", "dense", "hybrid"), help="Override spec.serving.retriever.")
    serve.add_argument("--host", default=None, help="Address to listen on (default 127.0.0.1).")
    serve.add_argument("--port", type=int, default=None, help="Port (default 8000; 0 lets the OS choose).")
    serve.add_argument("--device", default=None, help="cpu, cuda or auto (default cpu).")
    serve.add_argument("--index-cache", default=None, help="Where corpus indexes are kept (default beside the corpus).")
    serve.add_argument("--gateway-config", default=None,
                       help="gateway.json to keep the routes in (re-read when it changes; the local deployer writes it).")
    serve.add_argument("role", nargs="?", default="node", choices=("node", "gateway", "engine", "sidecar"),
                       help="node (default): the gateway and the embedded engine in one process; gateway: only the "
                            "gateway (--config gateway.json); engine: only the embedded engine (--base, --adapter); "
                            "sidecar: keep an engine's adapters equal to the desired set (--desired, --engine).")
    serve.add_argument("--base", help="engine: the base model directory (default: the one the first adapter's run names).")
    serve.add_argument("--adapter", action="append", default=[], metavar="NAME=RUN_DIR",
                       help="engine: an adapter to load at start (repeatable); the first one's manifest gives the chat template.")
    serve.add_argument("--name", default="base", help="engine: the base model's name in /v1/models (default base).")
    serve.add_argument("--dtype", default="auto", help="engine: auto (bf16 on a GPU that has it, else fp32), bf16, fp16, fp32.")
    serve.add_argument("--max-batch", type=int, default=16, help="engine: sequences decoded together (default 16).")
    serve.add_argument("--desired", help="sidecar: the desired adapter set (adapters.json) in the artifact store.")
    serve.add_argument("--engine", help="sidecar: the engine replica beside it (default http://127.0.0.1:8000).")
    serve.add_argument("--cache", default="/adapters", help="sidecar: where fetched adapters are kept (shared with the engine).")
    serve.add_argument("--interval", type=float, default=5.0, help="sidecar: seconds between two syncs (default 5).")
    serve.set_defaults(func=_serve)

    deploy = subparsers.add_parser(
        "deploy", help="Promote a run to serving (local backend) once its gate passed.",
        description="Start the run's server beside the serving one; switch when it is ready, otherwise keep the old "
                    "one and report the automatic rollback. Prints the outcome; -o json prints the transition events.")
    deploy.add_argument("spec", help="The FineTune spec file.")
    deploy.add_argument("--run", required=True, help="Run directory in the store.")
    deploy.add_argument("--store", help="Artifact store (default $FTOPS_STORE, else <home>/store).")
    deploy.add_argument("--corpus", help="Corpus folder (default: spec.serving.corpus, relative to the repository).")
    deploy.add_argument("--timeout", type=float, default=300, help="Seconds the new version has to become ready.")
    add_output_flag(deploy)
    uses(deploy, "home")
    deploy.set_defaults(func=_deploy)

    rollback = subparsers.add_parser(
        "rollback", help="Serve an earlier run of a spec again (one that passed its gate).",
        description="Back to the run that served before the current one, or to --to RUN (a prefix is enough).")
    rollback.add_argument("spec", help="Spec name or spec file.")
    rollback.add_argument("--to", help="Run id to return to (must have served before and passed its gate).")
    rollback.add_argument("--store", help="Artifact store (default $FTOPS_STORE, else <home>/store).")
    rollback.add_argument("--timeout", type=float, default=300, help="Seconds the version has to become ready.")
    add_output_flag(rollback)
    uses(rollback, "home", "backend", "kubeconfig", "operator_config")  # --backend kubernetes: the spec's Deployment
    rollback.set_defaults(func=_rollback)


def _repo_root(start: Path) -> Path:
    for parent in [start, *start.parents]:
        if (parent / ".git").exists() or (parent / "specs").is_dir():
            return parent
    return Path.cwd()


def _load_spec(path: str):
    from controller.errors import PermanentError
    from controller.spec import load_spec_text

    spec_path = Path(path)
    try:
        text = spec_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PermanentError(f"{path}: cannot read the spec ({exc.strerror})") from None
    loaded = load_spec_text(text, str(spec_path))
    if not loaded.ok:
        raise PermanentError("\n".join(f"{i.file}:{i.line}: {i.field}: {i.message}" for i in loaded.errors))
    ft = loaded.spec
    if ft.spec.serving is None:
        raise PermanentError(f"{path}: spec '{ft.name}' has no spec.serving block; add one to serve it")
    return ft, _repo_root(spec_path.resolve().parent)


def config_from_spec(spec_file: str, run_dir: str, corpus: str | None = None):
    """ServeConfig for a run of a spec: the spec's serving block, the corpus resolved in its repo."""
    from controller.serve.config import ServeConfig

    from controller.identity import serving_config, serving_config_sha256
    from controller.serve.corpus import folder_version

    ft, repo = _load_spec(spec_file)
    s = ft.spec.serving
    corpus_dir = corpus or (str(repo / s.corpus) if s.corpus else None)
    version = folder_version(Path(corpus_dir)) if corpus_dir else None
    return ServeConfig(run_dir=str(Path(run_dir).resolve()), model_name=ft.name,
                       corpus_dir=str(Path(corpus_dir).resolve()) if corpus_dir else None, retriever=s.retriever,
                       top_k=s.top_k, max_tokens=s.max_tokens,
                       serving_config_sha256=serving_config_sha256(serving_config(ft, version)))


def _serve(args: argparse.Namespace) -> int:
    if args.role != "node":
        return _serve_role(args)
    if args.config:
        if args.run or args.spec:
            print("error: give either --config or --run/--spec", file=sys.stderr)
            return exitcodes.USAGE
        from controller.serve.config import load_config

        # A relative corpus path is relative to the repository: $FTOPS_REPO_DIR, the image's copy
        # of the repo (/opt/ftops/repo in the serving image), or the working directory.
        image_repo = Path("/opt/ftops/repo")
        repo = os.environ.get("FTOPS_REPO_DIR") or (str(image_repo) if image_repo.is_dir() else os.getcwd())
        config = load_config(args.config, base=Path(repo))
    elif args.run and args.spec:
        config = config_from_spec(args.spec, args.run, args.corpus)
    else:
        print("error: give --run RUN_DIR and --spec SPEC_FILE (or --config serve.json)", file=sys.stderr)
        return exitcodes.USAGE
    changes = {k: v for k, v in {"host": args.host, "port": args.port, "device": args.device,
                                 "retriever": args.retriever, "index_cache": args.index_cache}.items() if v is not None}
    if args.corpus and args.config:
        changes["corpus_dir"] = str(Path(args.corpus).resolve())
    config = config.replace(**changes)
    from controller.serve.node import run_forever

    return run_forever(config, args.gateway_config)


def _serve_role(args: argparse.Namespace) -> int:
    """`ftops serve gateway|engine|sidecar`: one piece of the serving split on its own (pods)."""
    host, port = args.host or "127.0.0.1", args.port if args.port is not None else 8000
    if args.role == "gateway":
        if not args.config:
            print("error: ftops serve gateway needs --config gateway.json", file=sys.stderr)
            return exitcodes.USAGE
        from controller.serve.gateway import run_gateway

        return run_gateway(args.config, host, port)
    if args.role == "engine":
        from controller.serve.engine_server import EngineConfig, run_engine

        adapters = dict(a.split("=", 1) for a in args.adapter if "=" in a)
        if len(adapters) != len(args.adapter) or not (args.base or adapters):
            print("error: ftops serve engine needs --base DIR and/or --adapter NAME=RUN_DIR", file=sys.stderr)
            return exitcodes.USAGE
        first = next(iter(adapters.values()), None)
        config = EngineConfig(model_dir=args.base, template_run=first, name=args.name, adapters=adapters,
                              device=args.device or "cpu", dtype=args.dtype, max_batch=args.max_batch)
        return run_engine(config, host, port)
    if not args.desired:
        print("error: ftops serve sidecar needs --desired URI (the adapters.json the deployer writes)", file=sys.stderr)
        return exitcodes.USAGE
    from controller.serve.sidecar import run_sidecar

    store = os.environ.get("FTOPS_STORE") or args.desired.rsplit("/_engines/", 1)[0]
    return run_sidecar(store, args.desired, args.engine or "http://127.0.0.1:8000", args.cache, args.interval)


def _deploy(args: argparse.Namespace) -> int:
    from controller.serve.deploy import LocalServing

    config = config_from_spec(args.spec, args.run, args.corpus)
    result = LocalServing(_store(args), ready_timeout=args.timeout).deploy(config)
    _print_result(args, result)
    return exitcodes.OK if result.outcome in ("promoted", "unchanged") else exitcodes.FAILURE


def _rollback(args: argparse.Namespace) -> int:
    from controller.serve.deploy import LocalServing

    name = args.spec
    if args.backend == "kubernetes":
        result = _rollback_kubernetes(args)
    else:
        if name.endswith((".yaml", ".yml")) and Path(name).is_file():
            name = _load_spec(name)[0].name
        from controller.catalog import load_operator_config
        from controller.serve.api_deploy import ApiServing

        api = ApiServing(_store(args), load_operator_config(getattr(args, "operator_config", None)),
                         ready_timeout=args.timeout)
        # a managed fine-tune's rollback routes its gateway back to the earlier model id
        result = (api if api.owns(name) else LocalServing(_store(args), ready_timeout=args.timeout)).rollback(name, args.to)
    _print_result(args, result)
    ok = result.serving_run_id and result.outcome in ("rolled_back", "unchanged")
    return exitcodes.OK if ok else exitcodes.FAILURE


def _print_result(args: argparse.Namespace, result) -> None:
    """What a deploy or rollback did: one line for people, the result and its events with -o json|yaml."""
    format_ = fmt(args)
    if format_ in MACHINE:
        print(dump(result.to_dict(), format_))
    elif format_ == "name":
        print(f"run/{result.serving_run_id}" if result.serving_run_id else "")
    else:
        where = f" at {result.url}" if result.url else ""
        print(f"{result.outcome}: {'run ' + result.serving_run_id if result.serving_run_id else 'nothing'} serves"
              f"{where}{': ' + result.message if result.message else ''}")


def _rollback_kubernetes(args: argparse.Namespace):
    """Roll the spec's Deployment back to an earlier run, re-rendered from the spec and lineage
    recorded when that run was promoted (history in the store)."""
    from controller.backends.kubernetes import KubernetesBackend
    from controller.catalog import load_operator_config
    from controller.serve.kube import KubernetesServing

    name = args.spec
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        name = _load_spec(name)[0].name
    operator = load_operator_config(args.operator_config)
    kube = KubernetesBackend(kubeconfig=args.kubeconfig, operator=operator)
    return KubernetesServing(kube, operator, _store(args), ready_timeout=args.timeout).rollback(name, args.to)
