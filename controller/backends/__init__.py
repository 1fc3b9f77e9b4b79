"""Backends run training steps: `local` (subprocess) and `kubernetes` (Jobs). See base.py.

Only controller.backends.kubernetes imports the kubernetes client, and only when used."""
from controller.backends.base import Backend, Phase, Run, RunNotFound, RunState

__all__ = ["Backend", "Phase", "Run", "RunNotFound", "RunState", "make_backend"]


def make_backend(kind: str, **kwargs) -> Backend:
    """`local` (kwargs: root, command, env) or `kubernetes` (kwargs: api_client, kubeconfig,
    context, namespaces, field_manager). Imports the kubernetes client only for the latter."""
    if kind == "local":
        from controller.backends.local import LocalBackend

        return LocalBackend(**kwargs)
    if kind == "kubernetes":
        from controller.backends.kubernetes import KubernetesBackend

        return KubernetesBackend(**kwargs)
    from controller.errors import PermanentError

    raise PermanentError(f"unknown backend '{kind}': use 'local' or 'kubernetes'")
