"""A world of fakes for testing each step alone (tests/fakes), and a real ledger."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the fakes package

from fakes import FakeBackend, FakeClock, FakeData, FakeDeployer, FakeEvaluator, FakeRepoFiles, MemoryStore  # noqa: E402

from controller.catalog import load_operator_config  # noqa: E402
from controller.desired import decide, identities  # noqa: E402
from controller.home import Home  # noqa: E402
from controller.ledger import Ledger  # noqa: E402
from controller.reconcile.config import ControllerConfig  # noqa: E402
from controller.reconcile.context import Deps, SpecContext  # noqa: E402
from controller.render import template_version  # noqa: E402
from controller.source import CommitInfo, DataVersion, SpecAtRev  # noqa: E402
from controller.spec.load import load_spec_text  # noqa: E402

SPEC = """\
apiVersion: ftops.dev/v1alpha1
kind: FineTune
metadata: {name: triage, owner: support}
spec:
  baseModel: {uri: hf://org/base, revision: 0e9e39f249a16976918f6564b8830bc894c89659}
  dataset: {path: data/tickets.jsonl}
  method: {type: lora, r: 8}
  training: {epochs: 1}
  hardware: {gpuType: a100-80gb}
  evaluation:
    task: {metric: exact_match, min: 0.9}
    format: {jsonSchema: {type: object, required: [label]}, min: 1.0}
  serving: {corpus: corpora/kb, retriever: bm25, topK: 2}
"""
COMMIT = CommitInfo("c" * 40, "Ada", "ada@example.com", 1_800_000_000, "train triage")
MD5 = "0123456789abcdef0123456789abcdef"


@dataclass
class World:
    deps: Deps
    backend: FakeBackend
    evaluator: FakeEvaluator
    deployer: FakeDeployer
    store: MemoryStore
    data: FakeData
    repo: FakeRepoFiles
    clock: FakeClock
    ledger: Ledger
    root: Path

    def state(self, text: str = SPEC, md5: str = MD5) -> SpecAtRev:
        loaded = load_spec_text(text, "specs/triage.yaml")
        assert loaded.spec is not None, [i.format() for i in loaded.issues]
        return SpecAtRev("specs/triage.yaml", "b" * 40, loaded, DataVersion("data/tickets.jsonl", md5, 1234, 400, "dvc"))

    def context(self, text: str = SPEC, md5: str = MD5, **facts) -> SpecContext:
        state = self.state(text, md5)
        spec = state.loaded.spec
        assert spec is not None
        corpus = self.repo.corpus_version(COMMIT.sha, "corpora/kb")
        want = identities(state, self.deps.template_version, corpus)
        ctx = SpecContext(state, spec, COMMIT, want, decide(want, None, spec.spec.serving is not None), corpus, None,
                          self.store.run_uri(spec.metadata.name, want.run or ""))
        for key, value in facts.items():
            setattr(ctx, key, value)
        return ctx




def make_world(tmp_path: Path) -> World:
    store = MemoryStore()
    backend = FakeBackend(store)
    evaluator = FakeEvaluator(store)
    deployer = FakeDeployer(store)
    data = FakeData(tmp_path / "data")
    repo = FakeRepoFiles(tmp_path / "repo")
    clock = FakeClock()
    home = Home(tmp_path / "home")
    ledger = Ledger(home.ledger)
    config = ControllerConfig(repo=str(tmp_path / "git"), home=home.root)
    deps = Deps(config=config, operator=load_operator_config(None), home=home, ledger=ledger, backend=backend,
                evaluator=evaluator, store=store, deployer=deployer, repo=repo, data=data, clock=clock,
                template_version=template_version())
    return World(deps, backend, evaluator, deployer, store, data, repo, clock, ledger, tmp_path)
