"""One Backend for a repository whose specs train in different places: runs of `method.type:
api` go to the provider (ApiFineTuneBackend), every other run to this machine's or the cluster's
backend.

Why one routing Backend rather than a `--backend api` flag: a repository holds LoRA specs and
api specs side by side, and the reconciler has one `deps.backend` that its steps (train, prune,
the concurrency limit) ask about run ids read back from the ledger, without the spec at hand. So
the spec's method picks the backend on `submit`, and afterwards the api backend's own record of
the run (written before it calls the provider) says whose a run id is.
"""
from __future__ import annotations

from controller.backends.api_finetune import ApiFineTuneBackend
from controller.seams import Backend, Run, RunState


class ByMethod:
    """`api` runs to `api`, the rest to `other`. Named after `other` (what trains here), since
    an api run's submission names its own backend in the ledger."""

    def __init__(self, other: Backend, api: ApiFineTuneBackend) -> None:
        self.other = other
        self.api = api
        self.name = other.name

    def _for(self, run_id: str) -> Backend:
        return self.api if self.api.owns(run_id) else self.other

    def submit(self, run: Run) -> RunState:
        backend: Backend = self.api if run.finetune.spec.method.type == "api" else self.other
        return backend.submit(run)

    def status(self, run_id: str) -> RunState:
        return self._for(run_id).status(run_id)

    def cancel(self, run_id: str) -> RunState:
        return self._for(run_id).cancel(run_id)

    def logs(self, run_id: str, tail: int | None = None) -> str:
        return self._for(run_id).logs(run_id, tail)
