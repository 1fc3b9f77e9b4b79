"""What a spec wants, and what that takes (pure): the one computation `ftops plan` and the
reconciler share, so what a pull request's plan says will happen on merge is what the
controller does.

`identities` hashes a spec at a commit into the three identities that decide everything: the
run (what determines the trained weights), the evaluation (the run plus every gate plus the
serving configuration it is evaluated on: corpus version, retriever, topK, prompt, generation
limits) and the serving (the run plus the serving block and the corpus version). So a corpus or
retriever change is Evaluate then Deploy (the existing run is evaluated on what will serve, no
retraining), and only a replica or rollout change is Deploy alone. `decide` compares the
identities a spec wants with the ones it had (at the plan's base commit, or in the
reconciler's last status) and names the action and the steps it runs.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from controller.identity import eval_id, run_id, serving_id
from controller.source import SpecAtRev
from controller.status import STEPS


@dataclass(frozen=True)
class Identities:
    run: str | None
    evaluation: str | None
    serving: str | None

    @property
    def known(self) -> bool:
        return self.run is not None


NO_IDENTITIES = Identities(None, None, None)


def identities(state: SpecAtRev, template_version: str, corpus_version: str | None = None) -> Identities:
    """The identities of a valid spec whose data versions (the dataset's and, where it replays
    one, the replay file's) are known; none otherwise."""
    spec = state.loaded.spec
    if spec is None or state.data is None or not state.data.known:
        return NO_IDENTITIES
    if spec.spec.training.replay is not None and (state.replay is None or not state.replay.known):
        return NO_IDENTITIES
    run = run_id(spec, state.data.md5 or "", template_version, state.replay.md5 if state.replay is not None else None)
    return Identities(run, eval_id(run, spec, corpus_version), serving_id(run, spec, corpus_version))


class Action(str, enum.Enum):
    TRAIN = "Train"
    """A new run: its inputs changed (or the spec is new)."""
    EVALUATE = "Evaluate"
    """Same run, changed gates or serving configuration (corpus, retriever, topK, prompt,
    generation limits): evaluate and gate again on what will serve, without retraining."""
    DEPLOY = "Deploy"
    """Same run and evaluation, changed replicas or rollout: deploy again."""
    UPDATE = "Update"
    """Nothing the chain computes changed (labels, owner, budget, hardware placement)."""
    PRUNE = "Prune"
    """The spec was deleted."""
    NONE = "None"
    """Nothing changed, or the spec is invalid (the controller does not act on it)."""


_VERBS = {s.name: s.verb for s in STEPS if s.verb is not None}


@dataclass(frozen=True)
class Decision:
    action: Action
    steps: tuple[str, ...]
    """The plan verbs of the chain steps this action runs, in order (PrepareData, Train, ...)."""


def decide(want: Identities, have: Identities | None, serving: bool, *, deleted: bool = False,
           changed: bool = True) -> Decision:
    """The action that takes a spec from `have` (None: never seen) to `want`.

    `serving`: the spec has a serving block. `changed`: something about the spec differs at
    all (a label), so an equal set of identities is an Update rather than nothing."""
    if deleted:
        return Decision(Action.PRUNE, ("Prune",))
    if not want.known:
        return Decision(Action.NONE, ())
    deploy = ("Deploy",) if serving else ()
    if have is None or not have.known or have.run != want.run:
        chain = tuple(_VERBS[n] for n in ("data", "train", "evaluate", "gate"))
        return Decision(Action.TRAIN, chain + deploy)
    if have.evaluation != want.evaluation:
        return Decision(Action.EVALUATE, (_VERBS["evaluate"], _VERBS["gate"]) + deploy)
    if have.serving != want.serving:
        return Decision(Action.DEPLOY, deploy or ("Deploy",))
    return Decision(Action.UPDATE if changed else Action.NONE, ())
