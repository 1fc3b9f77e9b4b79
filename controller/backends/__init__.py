"""Backends run training steps: `local` (subprocess) and `kubernetes` (Jobs). See base.py.

Only controller.backends.kubernetes imports the kubernetes client, and only when used."""
from controller.backends.base import Backend, Phase, Run, RunNotFound, RunState

__all__ = ["Backend", "Phase", "Run", "RunNotFound", "RunState"]
