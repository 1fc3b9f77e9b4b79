"""controller.source is the one module that reads git: files at a revision, checkouts by
`git archive`, signed-commit checks and the working-copy questions the CLI asks. Each is run
on a real repository, bad revisions and paths included."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from controller import source
from controller.errors import PermanentError
from controller.source import GitSource, SourceUnavailable


@pytest.fixture
def history(git_repo):
    """Two commits: v1 then v2 of the same file, plus an uncommitted edit on top."""
    git_repo.write("data/train.jsonl", "v1\n")
    git_repo.write("README.md", "readme\n")
    first = git_repo.commit("v1")
    git_repo.write("data/train.jsonl", "v2\n")
    second = git_repo.commit("v2")
    git_repo.write("data/train.jsonl", "uncommitted\n")
    return git_repo, first, second


# ----------------------------------------------------------------------------- show


def test_show_reads_the_file_as_committed_at_each_revision(history):
    repo, first, second = history
    with GitSource(repo.root) as src:
        assert src.show(first, "data/train.jsonl") == b"v1\n"
        assert src.show(second, "data/train.jsonl") == b"v2\n"
        assert src.show("main", "data/train.jsonl") == b"v2\n"  # a branch, never the working copy
        assert src.show("HEAD~1", "./data/train.jsonl") == b"v1\n"
        assert src.show(second, "data/absent.jsonl") is None
        assert src.show(second, "data") is None  # a folder is not a file


@pytest.mark.parametrize("rev", ["no-such-branch", "0" * 40])
def test_show_at_a_revision_that_does_not_exist_names_it(history, rev):
    repo, _, _ = history
    with GitSource(repo.root) as src, pytest.raises(SourceUnavailable, match=f"revision '{rev}' does not exist in {repo.root}"):
        src.show(rev, "data/train.jsonl")


@pytest.mark.parametrize("rev", ["--output=/tmp/x", "main;rm", "a b"])
def test_a_revision_that_cannot_be_one_is_refused_before_git_runs(history, rev):
    repo, _, _ = history
    with GitSource(repo.root) as src, pytest.raises(PermanentError, match="is not a git revision"):
        src.show(rev, "README.md")


@pytest.mark.parametrize("path", ["../outside.txt", "/etc/passwd", "data/../../x", ""])
def test_a_path_outside_the_repository_is_refused_and_named(history, path):
    repo, _, second = history
    with GitSource(repo.root) as src, pytest.raises(PermanentError, match=f"'{path}' is not a path inside the repository"):
        src.show(second, path)


def test_a_folder_that_is_not_a_repository_says_so(tmp_path):
    (tmp_path / "plain").mkdir()
    for where in (tmp_path / "plain", tmp_path / "gone"):
        with GitSource(where) as src, pytest.raises(SourceUnavailable, match=f"{where} is not a git repository"):
            src.show("main", "README.md")


# ----------------------------------------------------------------------------- extract


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (f"-> {os.readlink(p)}" if p.is_symlink() else p.read_text())
            for p in sorted(root.rglob("*")) if p.is_symlink() or p.is_file()}


def test_extract_writes_the_commit_not_the_working_copy(history, tmp_path):
    repo, first, second = history
    repo.write("bin/run.sh", "#!/bin/sh\necho hi\n").chmod(0o755)
    os.symlink("../README.md", repo.root / "data" / "readme-link")
    third = repo.commit("script and an inside link")  # commits "uncommitted" too
    with GitSource(repo.root) as src:
        src.extract(first, tmp_path / first)
        src.extract(third, tmp_path / third)
    assert _files(tmp_path / first) == {"README.md": "readme\n", "data/train.jsonl": "v1\n"}
    got = _files(tmp_path / third)
    assert got["data/train.jsonl"] == "uncommitted\n" and got["data/readme-link"] == "-> ../README.md"
    assert os.access(tmp_path / third / "bin" / "run.sh", os.X_OK)  # the executable bit survives
    assert not list(tmp_path.glob("*.tmp"))


def test_extract_a_folder_by_its_tree_hash(history, tmp_path):
    repo, _, second = history
    with GitSource(repo.root) as src:
        tree = src.tree(second)["data"].sha
        src.extract(tree, tmp_path / tree)
    assert _files(tmp_path / tree) == {"train.jsonl": "v2\n"}


def test_extract_leaves_out_a_link_that_leads_out_of_the_checkout(git_repo, tmp_path):
    git_repo.write("kept.txt", "kept\n")
    os.symlink("/etc/passwd", git_repo.root / "absolute")
    os.symlink("../../outside", git_repo.root / "escapes")
    sha = git_repo.commit("links")
    with GitSource(git_repo.root) as src:
        src.extract(sha, tmp_path / "out")
    assert _files(tmp_path / "out") == {"kept.txt": "kept\n"}


def test_extract_of_a_bad_treeish_names_it_and_writes_nothing(history, tmp_path):
    repo, _, second = history
    with GitSource(repo.root) as src:
        with pytest.raises(SourceUnavailable, match=f"'{'f' * 40}' is not a commit or tree in {repo.root}"):
            src.extract("f" * 40, tmp_path / "x")
        blob = src.tree(second)["README.md"].sha
        with pytest.raises(PermanentError, match=f"'{blob}' is a blob, not a commit or tree"):
            src.extract(blob, tmp_path / "y")
        with pytest.raises(PermanentError, match="is not a git revision"):
            src.extract("--remote=evil", tmp_path / "z")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no target, no half folder


def test_a_crash_mid_extract_leaves_no_folder_a_later_pass_would_trust(history, tmp_path, monkeypatch):
    repo, _, second = history
    target = tmp_path / second
    calls = []

    def crash_on_second_member(member, dest):
        calls.append(member.name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return member

    with GitSource(repo.root) as src:
        monkeypatch.setattr(source, "_inside_target", crash_on_second_member)
        with pytest.raises(SourceUnavailable, match=f"git archive {second} into {target} failed"):
            src.extract(second, target)
        assert not target.exists() and not target.with_name(target.name + ".tmp").exists()
        monkeypatch.undo()
        target.with_name(target.name + ".tmp").mkdir()  # what a kill -9 would leave
        (target.with_name(target.name + ".tmp") / "half").write_text("half")
        src.extract(second, target)
    assert _files(target) == {"README.md": "readme\n", "data/train.jsonl": "v2\n"}


def test_extract_keeps_a_copy_that_is_already_in_place(history, tmp_path):
    """Another process renamed the same content into place first: its copy stays."""
    repo, _, second = history
    target = tmp_path / second
    target.mkdir()
    (target / "marker").write_text("first writer")
    with GitSource(repo.root) as src:
        src.extract(second, target)
    assert (target / "marker").read_text() == "first writer"
    assert not target.with_name(target.name + ".tmp").exists()


# ----------------------------------------------------------------------------- verify_commit


def _key(tmp_path: Path, name: str) -> Path:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


def _commit(repo, message: str, key: Path | None) -> str:
    repo.write("CHANGELOG.md", message + "\n")
    repo.git("add", "-A")
    signing = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "commit", "-S"] if key else ["commit"]
    repo.git(*signing, "-q", "-m", message)
    return repo.git("rev-parse", "HEAD")


def test_verify_commit_accepts_only_a_listed_key(git_repo, tmp_path):
    trusted, stranger = _key(tmp_path, "trusted"), _key(tmp_path, "stranger")
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"platform@example.com {trusted.with_suffix('.pub').read_text().strip()}\n")
    good = _commit(git_repo, "signed by the platform team", trusted)
    unsigned = _commit(git_repo, "unsigned", None)
    other = _commit(git_repo, "signed by an unknown key", stranger)
    with GitSource(git_repo.root) as src:
        assert src.verify_commit(good, signers) is True
        assert src.verify_commit(unsigned, signers) is False
        assert src.verify_commit(other, signers) is False
        assert src.verify_commit("HEAD~2", signers) is True  # a revision is resolved first


def test_verify_commit_names_a_missing_signers_file_and_a_missing_commit(git_repo, tmp_path):
    sha = _commit(git_repo, "unsigned", None)
    signers = tmp_path / "allowed_signers"
    with GitSource(git_repo.root) as src:
        with pytest.raises(PermanentError, match=f"{signers}: allowed-signers file not found"):
            src.verify_commit(sha, signers)
        signers.write_text("")
        with pytest.raises(SourceUnavailable, match=f"revision '{'e' * 40}' does not exist"):
            src.verify_commit("e" * 40, signers)


# ----------------------------------------------------------------------------- working copies


def test_toplevel_of_a_file_a_folder_and_outside_any_repository(history, tmp_path):
    repo, _, _ = history
    assert source.toplevel(repo.root / "data" / "train.jsonl") == repo.root
    assert source.toplevel(repo.root / "data") == repo.root
    assert source.toplevel(repo.root / "data" / "not-yet-written.jsonl") == repo.root
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert source.toplevel(outside) is None
    assert source.toplevel(tmp_path / "gone" / "deeper" / "spec.yaml") is None


def test_tracked_is_committed_or_staged_and_takes_the_path_literally(history):
    repo, _, _ = history
    repo.write("data/new.jsonl", "new\n")
    assert source.tracked(repo.root, "data/train.jsonl")
    assert not source.tracked(repo.root, "data/new.jsonl")
    repo.git("add", "data/new.jsonl")
    assert source.tracked(repo.root, "data/new.jsonl")
    assert not source.tracked(repo.root, "data/*.jsonl")  # a pattern is a file name here, not a glob
    assert source.tracked(repo.root, Path("data") / "train.jsonl")
