"""Structural lint of docker/*.Dockerfile (no container engine here to build them): base images
pinned by tag, every COPY source present in the build context and not excluded by the
Dockerfile's .dockerignore, torch pinned to the project's version from the right index (CPU for
the controller, CUDA for the trainer), the locked requirements installed, a non-root USER last,
exec-form entrypoints, and no credentials or digests baked in."""
from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import pytest

from cluster_helpers import ROOT

DOCKER = ROOT / "docker"
FILES = sorted(DOCKER.glob("*.Dockerfile"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, f"{path.name}: dangling line continuation"
    return out


def args_defaults(ins: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for word, rest in ins:
        if word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            out[k] = v
    return out


def expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), text)


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes."""
    result = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.rstrip("/")
        if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(rel, pat + "/*") or rel == pat:
            result = not neg
    return result


def ignore_patterns(dockerfile: Path) -> list[str]:
    path = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert path.is_file(), f"{path.name} missing: without it the whole repository (.venv, .git) is the context"
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def project_torch() -> str:
    pins = re.findall(r'"torch==([\w.+-]+)"', (ROOT / "pyproject.toml").read_text())
    assert len(pins) == 1
    return pins[0]


def test_both_images_exist():
    assert {p.name for p in FILES} == {"controller.Dockerfile", "trainer.Dockerfile"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_base_images_are_pinned_by_tag(path):
    ins = instructions(path)
    env = args_defaults(ins)
    stages = []
    for word, rest in ins:
        if word != "FROM":
            continue
        image = expand(rest.split()[0], env)
        if image in stages:
            continue  # FROM an earlier stage
        assert "$" not in image, f"{path.name}: unresolved base image {rest}"
        name, _, tag = image.partition(":")
        assert tag and tag != "latest" and "@" not in name, f"{path.name}: {image} is not pinned by a tag"
        assert re.search(r"\d", tag), f"{path.name}: {image}: pin a versioned tag"
        if " AS " in rest.upper():
            stages.append(rest.split()[-1])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_copy_source_exists_in_the_context(path):
    patterns = ignore_patterns(path)
    for word, rest in instructions(path):
        if word in ("COPY", "ADD"):
            parts = shlex.split(rest)
            if any(p.startswith("--from=") for p in parts):
                continue
            srcs = [p for p in parts if not p.startswith("--")][:-1]
            assert srcs, f"{path.name}: {word} {rest}"
            for src in srcs:
                assert not re.match(r"https?://", src), f"{path.name}: {word} of a URL ({src}) is not reproducible"
                assert (ROOT / src).exists(), f"{path.name}: {word} source {src} does not exist"
                assert not ignored(src.rstrip("/"), patterns), f"{path.name}: {src} is excluded by the .dockerignore"
    assert ignored(".venv", patterns) and ignored(".git", patterns) and ignored(".tools", patterns)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_runs_as_a_non_root_user(path):
    users = [rest for word, rest in instructions(path) if word == "USER"]
    assert users, f"{path.name}: no USER: the image would run as root"
    last = users[-1].split(":")[0]
    assert last not in ("root", "0") and last.isdigit(), f"{path.name}: USER {users[-1]} (use a numeric non-root uid)"


@pytest.mark.parametrize("path,index", [(DOCKER / "controller.Dockerfile", "whl/cpu"),
                                        (DOCKER / "trainer.Dockerfile", "whl/cu")], ids=["controller", "trainer"])
def test_torch_is_pinned_from_the_right_index_before_the_lock(path, index):
    ins = instructions(path)
    env = args_defaults(ins)
    runs = [expand(rest, env) for word, rest in ins if word == "RUN"]
    torch = [i for i, r in enumerate(runs) if "torch==" in r]
    lock = [i for i, r in enumerate(runs) if "-r /src/requirements.lock" in r]
    assert len(torch) == 1 and len(lock) == 1 and torch[0] < lock[0]
    assert f'"torch=={project_torch()}"' in runs[torch[0]]
    assert index in runs[torch[0]] and "--index-url" in runs[torch[0]]
    assert "--no-deps" in next(r for r in runs if "pip install" in r and "/src" in r and "requirements.lock" not in r)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_secrets_or_digests_are_baked_in(path):
    text = path.read_text()
    for word in ("AWS_SECRET_ACCESS_KEY", "PASSWORD", "TOKEN=", "FTOPS_IMAGE_DIGEST", "sha256:"):
        assert word not in text, f"{path.name} mentions {word}"
    for word, rest in instructions(path):
        if word in ("ENTRYPOINT", "CMD"):
            assert rest.startswith("["), f"{path.name}: {word} should be exec form (signals reach the process)"


def test_controller_image_has_git_and_a_matching_uid():
    runs = " ".join(rest for word, rest in instructions(DOCKER / "controller.Dockerfile") if word == "RUN")
    assert "git" in runs.split() and "openssh-client" in runs.split()
    values = (ROOT / "charts" / "ftops" / "values.yaml").read_text()
    assert "runAsUser: 10001" in values and "USER 10001:10001" in (DOCKER / "controller.Dockerfile").read_text()


def test_trainer_uid_matches_the_operator_config():
    import yaml

    op = yaml.safe_load((ROOT / "controller" / "defaults" / "operator.yaml").read_text())
    uid = op["cluster"]["runAsUser"]
    assert f"USER {uid}:{uid}" in (DOCKER / "trainer.Dockerfile").read_text()
