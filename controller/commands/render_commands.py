"""`ftops render SPEC`: print the Kubernetes manifests a spec's training run (and, with
--serving, its server) would get, exactly as the kubernetes backend would apply them.

Operators read this output to review what lands on their GPU nodes; `kubectl apply -f -`
accepts it. Nothing here talks to a cluster."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controller import exitcodes
from controller.errors import PermanentError

ZERO_MD5 = "0" * 32


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "render",
        help="print the Kubernetes manifests for a spec's training run (and serving with --serving)",
        description="Exit codes: 0 ok, 1 invalid spec or manifests, 2 usage error.",
    )
    p.add_argument("spec", help="path of a FineTune spec file")
    p.add_argument("--operator-config", help="operator config overriding the shipped defaults")
    p.add_argument("--data-md5", help="dataset md5 (default: from the dataset's .dvc pointer)")
    p.add_argument("--commit", help="git commit recorded in lineage labels (default: HEAD of the spec's repo)")
    p.add_argument("--flavor", choices=("job", "jobset", "trainjob"), help="override the operator's trainingFlavor")
    p.add_argument("--namespace", help="target namespace; refused unless it is the spec owner's")
    p.add_argument("--serving", action="store_true", help="also print the serving Deployment, Service and ConfigMap")
    p.set_defaults(func=cmd_render)


def load_finetune(path: Path, gpu_types: list[str] | None = None):
    """The one place this command turns a file into a FineTune (the shared spec loader)."""
    from controller.spec.load import load_spec_text

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PermanentError(f"{path}: no such file") from None
    loaded = load_spec_text(text, str(path), gpu_types=gpu_types)
    if not loaded.ok:
        raise PermanentError("\n".join(i.format() for i in loaded.errors))
    return loaded.spec


def _version_md5(spec_path: Path, rel: str) -> str | None:
    """The version the controller would read for a file of the spec's repo, from the working tree:
    the md5 its `.dvc` pointer records, or the md5 of the file itself when it is committed to git
    (controller.source.SpecCache.data_versions); None when neither is there."""
    import hashlib

    from controller.source import parse_dvc_pointer, toplevel

    root = toplevel(spec_path.resolve()) or spec_path.resolve().parent.parent
    pointer = root / (rel + ".dvc")
    if pointer.is_file():
        version = parse_dvc_pointer(rel, pointer.read_bytes())
        return version.md5.removesuffix(".dir") if version.md5 else None
    if (root / rel).is_file():
        return hashlib.md5((root / rel).read_bytes()).hexdigest()
    return None


def _data_md5(spec_path: Path, dataset_path: str) -> str:
    md5 = _version_md5(spec_path, dataset_path)
    if md5 is None:
        print(f"ftops render: warning: {dataset_path}.dvc has no md5; using {ZERO_MD5} (pass --data-md5)", file=sys.stderr)
        return ZERO_MD5
    return md5


def _commit(spec_path: Path) -> str:
    """HEAD of the spec's repository, or forty zeros outside one (or before its first commit)."""
    from controller.source import GitSource, SourceUnavailable, toplevel

    root = toplevel(spec_path.resolve())
    if root is not None:
        try:
            return GitSource(root).resolve("HEAD")
        except SourceUnavailable:
            pass
    return "0" * 40


def cmd_render(args: argparse.Namespace) -> int:
    from controller.catalog import load_operator_config
    from controller.render import ServingInput, input_for, render, render_serving, to_yaml

    path = Path(args.spec)
    operator = load_operator_config(args.operator_config)
    finetune = load_finetune(path, sorted(operator.gpus))
    md5 = args.data_md5 or _data_md5(path, finetune.spec.dataset.path)
    commit = args.commit or _commit(path)
    replay = finetune.spec.training.replay
    inp = input_for(finetune, md5, commit, operator, namespace=args.namespace, flavor=args.flavor,
                    replay_md5=_version_md5(path, replay.path) if replay is not None else None)
    manifests = render(inp)
    if args.serving:
        manifests += render_serving(ServingInput(
            finetune=finetune, run_id=inp.run_id,
            data_md5=md5, git_commit=commit, operator=operator, namespace=args.namespace,
        ))
    sys.stdout.write(to_yaml(manifests))
    return exitcodes.OK
