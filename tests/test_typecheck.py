"""The type checker as a test, so `pytest` alone catches a type regression (`make test` also runs
mypy itself): the reconciler, the seams and their implementations type-check with 0 errors
([tool.mypy] in pyproject.toml), every implementation is held to its seam's protocol, and the
seam methods of the implementations are declared with the seam's own types, never `Any`.

Why a conformance module here and not only `isinstance` in the conformance suites: a
runtime_checkable protocol only checks that the method names exist; mypy checks the signatures.
The module is checked in the same mypy run as the configured files, together with one
deliberately wrong implementation, whose error must be reported: the check is live.

mypy keeps its cache in `.mypy_cache/` (ignored by git): a warm run takes seconds, a cold one
minutes (it reads the stubs of torch, transformers and kubernetes once).
"""
from __future__ import annotations

import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from controller.artifacts import FsspecStore
from controller.backends.api_finetune import ApiFineTuneBackend
from controller.backends.by_method import ByMethod
from controller.backends.kubernetes import KubernetesBackend
from controller.backends.local import LocalBackend, LocalEvaluator
from controller.seams import ArtifactStore, Backend, Deployer, Evaluator
from controller.serve.deploy import LocalServing
from controller.serve.kube import KubernetesServing

ROOT = Path(__file__).resolve().parents[1]

IMPLEMENTATIONS: list[tuple[type, type]] = [
    (Backend, LocalBackend), (Backend, KubernetesBackend), (Backend, ApiFineTuneBackend), (Backend, ByMethod),
    (Evaluator, LocalEvaluator),
    (Deployer, LocalServing), (Deployer, KubernetesServing),
    (ArtifactStore, FsspecStore),
]

CONFORMANCE = '''\
"""Each implementation where its seam is expected: mypy checks every signature."""
from controller.artifacts import FsspecStore
from controller.backends.api_finetune import ApiFineTuneBackend
from controller.backends.by_method import ByMethod
from controller.backends.kubernetes import KubernetesBackend
from controller.backends.local import LocalBackend, LocalEvaluator
from controller.seams import ArtifactStore, Backend, Deployer, Evaluator
from controller.serve.deploy import LocalServing
from controller.serve.kube import KubernetesServing


def backends(local: LocalBackend, kube: KubernetesBackend, api: ApiFineTuneBackend, routed: ByMethod) -> list[Backend]:
    return [local, kube, api, routed]


def evaluators(local: LocalEvaluator) -> list[Evaluator]:
    return [local]


def deployers(local: LocalServing, kube: KubernetesServing) -> list[Deployer]:
    return [local, kube]


def stores(fsspec: FsspecStore) -> list[ArtifactStore]:
    return [fsspec]
'''

BROKEN = '''\
"""A backend whose submit takes the wrong type: mypy must refuse it as a Backend."""
from controller.seams import Backend, RunState


class WrongBackend:
    name = "wrong"

    def submit(self, run: str) -> RunState:
        raise NotImplementedError

    def status(self, run_id: str) -> RunState:
        raise NotImplementedError

    def cancel(self, run_id: str) -> RunState:
        raise NotImplementedError

    def logs(self, run_id: str, tail: int | None = None) -> str:
        raise NotImplementedError


def backend(wrong: WrongBackend) -> Backend:
    return wrong  # the one error this run must report
'''


def _configured_files() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    return list(config["files"])


def test_mypy_reports_no_errors_and_holds_implementations_to_their_seams(tmp_path):
    (tmp_path / "seam_conformance.py").write_text(CONFORMANCE)
    (tmp_path / "seam_broken.py").write_text(BROKEN)
    files = _configured_files() + [str(tmp_path / "seam_conformance.py"), str(tmp_path / "seam_broken.py")]
    proc = subprocess.run([sys.executable, "-m", "mypy", "--no-color-output", "--show-error-codes", *files],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)
    report = proc.stdout + proc.stderr
    errors = [line for line in report.splitlines() if re.search(r":\d+: error:", line)]
    broken_line = BROKEN.splitlines().index("    return wrong  # the one error this run must report") + 1
    assert len(errors) == 1 and f"seam_broken.py:{broken_line}: error:" in errors[0], report
    assert "[return-value]" in errors[0] and '"Backend"' in errors[0], report


@pytest.mark.parametrize("seam,impl", IMPLEMENTATIONS, ids=lambda t: t.__name__)
def test_seam_methods_are_declared_with_the_seam_types(seam: type, impl: type):
    """Each method of the protocol: the implementation has every parameter the protocol names,
    annotated exactly as the protocol annotates it (extra parameters must have defaults), the same
    return annotation, and no `Any` anywhere in the signature."""
    methods = [n for n, v in vars(seam).items() if callable(v) and not n.startswith("_")]
    assert methods, seam
    for name in methods:
        want = inspect.signature(getattr(seam, name))
        have = inspect.signature(getattr(impl, name))
        where = f"{impl.__name__}.{name}{have}"
        for param in want.parameters.values():
            assert param.name in have.parameters, f"{where} lacks `{param.name}` of {seam.__name__}.{name}{want}"
            assert have.parameters[param.name].annotation == param.annotation, f"{where} vs {seam.__name__}.{name}{want}"
        for extra in set(have.parameters) - set(want.parameters):
            assert have.parameters[extra].default is not inspect.Parameter.empty, f"{where}: `{extra}` needs a default"
        assert have.return_annotation == want.return_annotation, f"{where} vs {seam.__name__}.{name}{want}"
        annotations = [str(p.annotation) for p in have.parameters.values()] + [str(have.return_annotation)]
        assert not any(re.search(r"\bAny\b", a) for a in annotations), where
