"""The FineTune spec: pydantic models split by domain, and a safe YAML loader with line numbers."""
from controller.spec.finetune import API_VERSION, KIND, FineTune
from controller.spec.load import LoadedSpec, RepoView, SpecIssue, check_against_repo, load_spec_text, parse_spec

__all__ = [
    "API_VERSION",
    "KIND",
    "FineTune",
    "LoadedSpec",
    "RepoView",
    "SpecIssue",
    "check_against_repo",
    "load_spec_text",
    "parse_spec",
]
