"""Git: resolve a revision, list specs with their blob hashes, read files at a revision.

Everything the controller desires comes from git, read at an exact commit, never from a
working copy that may hold uncommitted edits. Reading goes through one long-lived
`git cat-file --batch` process, and parsed specs are cached by (path, blob hash), so an
unchanged spec is never parsed twice however often the controller polls.

This is the one module that reads git: `GitSource` (revisions, trees, files, checkouts by
`git archive`, signed-commit checks) and, for commands run inside a working copy, `toplevel`
and `tracked`. Everyone else asks here, so a revision or path that does not exist gets one
clear error, whoever asked. Writing a repository (`git init`, `git commit`) is not here: the
controller never writes the repository it reconciles; the demo, which plays the person who
commits, keeps its own writer (controller.demo).
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

import yaml

from controller.errors import PermanentError, TemporaryError
from controller.spec.load import LoadedSpec, PathKind, check_against_repo, parse_spec, repo_paths

SPECS_DIR = "specs"
SYMLINK_MODE = "120000"
TREE_MODE = "040000"


class SourceUnavailable(TemporaryError):
    """Git could not be reached or the revision does not exist. Nothing is changed because of it."""


class Entry(NamedTuple):
    """One tree entry. A NamedTuple: hashed and compared in C, since caches key on many of them."""

    mode: str
    kind: str  # blob | tree | commit
    sha: str


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    author: str
    email: str
    time: int
    message: str


@dataclass(frozen=True)
class DataVersion:
    """The version of a dataset as pinned in git: from its .dvc pointer, or the committed file."""

    path: str
    md5: str | None
    size: int | None
    examples: int | None
    source: str  # "dvc" | "git" | "missing" | "invalid"
    pointer_blob: str | None = None
    error: str | None = None
    tokens: int | None = None
    """Tokens of the valid examples as `ftops data version` counted them (`meta.ftops.tokens`),
    with the same counter `ftops data check` uses; None when the pointer does not record it."""

    @property
    def known(self) -> bool:
        return self.md5 is not None


def _env() -> dict[str, str]:
    """Never prompt (a controller has no terminal), and English messages to parse and show."""
    return dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="true", LC_ALL="C")


# A revision as a person or the controller names it (branch, tag, sha, HEAD~1): never an option.
_REV = re.compile(r"^[A-Za-z0-9._/@^~{}-]+$")


def _check_rev(rev: str) -> None:
    if not _REV.match(rev) or rev.startswith("-"):
        raise PermanentError(f"'{rev}' is not a git revision")


def _git(repo: Path, *args: str, input: bytes | None = None, timeout: float = 120) -> bytes:
    try:
        done = subprocess.run(
            ["git", *args], cwd=repo, input=input, capture_output=True, timeout=timeout, env=_env(), check=False
        )
    except subprocess.TimeoutExpired:
        raise SourceUnavailable(f"git {' '.join(args[:2])} timed out after {timeout:.0f}s in {repo}") from None
    except FileNotFoundError:
        if not Path(repo).is_dir():
            raise SourceUnavailable(f"{repo} is not a git repository (or is gone)") from None
        raise PermanentError("git is not installed: install git and retry") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise SourceUnavailable(f"git {' '.join(args[:2])} failed in {repo}: {message[-1] if message else 'no output'}")
    return done.stdout


class GitSource:
    """A git repository, local or remote, read at exact revisions.

    `location` is a local path (read in place) or a URL (mirrored into `cache_dir` and fetched
    on `refresh()`). Local paths are read through git too, so uncommitted edits never count."""

    def __init__(self, location: str | Path, cache_dir: str | Path | None = None) -> None:
        self.location = str(location)
        self._remote = bool(re.match(r"^[a-z][a-z0-9+.-]*://|^[^/]+@[^/]+:", self.location))
        if self._remote:
            base = Path(cache_dir or Path.home() / ".cache" / "ftops" / "git")
            self.repo = base / hashlib.sha256(self.location.encode()).hexdigest()[:16]
        else:
            self.repo = Path(self.location).resolve()
        self._batch: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._trees: dict[str, dict[str, Entry]] = {}

    # -- revisions ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Fetch from the remote (URLs only). Raises SourceUnavailable when it cannot be reached;
        the last fetched state stays usable for reading."""
        if not self._remote:
            if not (self.repo / ".git").exists() and not (self.repo / "HEAD").exists():
                raise SourceUnavailable(f"{self.repo} is not a git repository (or is gone)")
            return
        if not (self.repo / "HEAD").exists():
            self.repo.parent.mkdir(parents=True, exist_ok=True)
            _git(self.repo.parent, "clone", "--mirror", "--quiet", self.location, str(self.repo), timeout=600)
        else:
            _git(self.repo, "fetch", "--prune", "--quiet", "origin", timeout=600)

    def resolve(self, rev: str) -> str:
        """The commit sha for `rev` (branch, tag or sha). Raises SourceUnavailable naming `rev`
        when it does not exist (a branch may appear on the next fetch), PermanentError when it
        cannot be a revision at all."""
        _check_rev(rev)
        try:
            return _git(self.repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").decode().strip()
        except SourceUnavailable:
            if not self._is_repository():
                raise SourceUnavailable(f"{self.location} is not a git repository (or is gone)") from None
            raise SourceUnavailable(f"revision '{rev}' does not exist in {self.location}") from None

    def _is_repository(self) -> bool:
        try:
            _git(self.repo, "rev-parse", "--git-dir")
        except SourceUnavailable:
            return False
        return True

    def commit_info(self, sha: str) -> CommitInfo:
        out = _git(self.repo, "show", "-s", "--format=%H%x00%an%x00%ae%x00%ct%x00%B", sha).decode()
        full, author, email, when, message = out.split("\x00", 4)
        return CommitInfo(full, author, email, int(when), message.strip())

    # -- trees and blobs ---------------------------------------------------------------------

    def tree(self, sha: str) -> dict[str, Entry]:
        """Every path in the commit (files, folders, links), cached per commit."""
        cached = self._trees.get(sha)
        if cached is not None:
            return cached
        out = _git(self.repo, "ls-tree", "-r", "-t", "-z", "--full-tree", sha)
        entries: dict[str, Entry] = {}
        for record in out.split(b"\x00"):
            if not record:
                continue
            meta, _, path = record.partition(b"\t")
            mode, kind, obj = meta.decode().split(" ")
            entries[path.decode()] = Entry(mode, kind, obj)
        if len(self._trees) > 16:
            self._trees.pop(next(iter(self._trees)))
        self._trees[sha] = entries
        return entries

    def read_blobs(self, shas: Iterable[str]) -> dict[str, bytes]:
        """Contents of many blobs through one `git cat-file --batch` process."""
        wanted = list(dict.fromkeys(shas))
        if not wanted:
            return {}
        with self._lock:
            proc = self._cat_file()
            assert proc.stdin is not None and proc.stdout is not None
            request = ("\n".join(wanted) + "\n").encode()

            # Write from a thread: with both pipes full, writing everything before reading deadlocks.
            def feed() -> None:
                proc.stdin.write(request)
                proc.stdin.flush()

            writer = threading.Thread(target=feed, daemon=True)
            writer.start()
            result: dict[str, bytes] = {}
            for sha in wanted:
                header = proc.stdout.readline().decode().split()
                if len(header) != 3:
                    raise SourceUnavailable(f"git cat-file could not read object {sha}: {' '.join(header)}")
                size = int(header[2])
                result[sha] = proc.stdout.read(size)
                proc.stdout.read(1)  # trailing newline
            writer.join()
            return result

    def read_file(self, sha: str, path: str) -> bytes | None:
        entry = self.tree(sha).get(path)
        if entry is None or entry.kind != "blob":
            return None
        return self.read_blobs([entry.sha])[entry.sha]

    def show(self, rev: str, path: str) -> bytes | None:
        """The file at `path` (relative to the repository's top) in revision `rev`; None when
        that revision has no file there. `rev` that does not exist: SourceUnavailable naming it;
        a path that cannot be inside the repository: PermanentError naming it."""
        clean = posixpath.normpath(path) if path else ""
        if not path or path.startswith("/") or clean == ".." or clean.startswith("../"):
            raise PermanentError(f"'{path}' is not a path inside the repository: name it relative to the repository's top")
        return self.read_file(self.resolve(rev), clean)

    # -- checkouts and signatures ------------------------------------------------------------

    def extract(self, treeish: str, target: str | Path) -> None:
        """Write the files of a commit or a tree (by sha, as `git archive` gives them) to
        `target`, atomically: they are unpacked into a sibling folder and renamed into place, so
        a crash leaves no half-written folder that a later pass would trust. The name of a
        target is its content (a commit or tree sha), so when another process renamed the same
        content into place first, its copy is kept. A symlink that leads out of `target` is
        left out (the spec loader already refuses specs whose paths go through one)."""
        _check_rev(treeish)
        try:
            kind = _git(self.repo, "cat-file", "-t", treeish).decode().strip()
        except SourceUnavailable:
            raise SourceUnavailable(f"'{treeish}' is not a commit or tree in {self.location}") from None
        if kind not in ("commit", "tree"):
            raise PermanentError(f"'{treeish}' is a {kind}, not a commit or tree: only folders and commits can be extracted")
        target = Path(target)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # what a crash left behind
        tmp.mkdir(parents=True)
        with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a chatty stderr cannot stall the stream
            proc = subprocess.Popen(["git", "archive", "--format=tar", treeish], cwd=self.repo, stdout=subprocess.PIPE,
                                    stderr=errors, env=_env())
            assert proc.stdout is not None
            try:
                with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
                    archive.extractall(tmp, filter=_inside_target)
            except (tarfile.TarError, OSError) as exc:
                proc.kill()
                proc.wait()
                shutil.rmtree(tmp, ignore_errors=True)
                errors.seek(0)
                said = errors.read().decode(errors="replace").strip()
                raise SourceUnavailable(f"git archive {treeish} into {target} failed: {said or exc}") from None
            finally:
                proc.stdout.close()
            if proc.wait() != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                errors.seek(0)
                raise SourceUnavailable(f"git archive {treeish} failed in {self.location}: "
                                        f"{errors.read().decode(errors='replace').strip() or 'no output'}")
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # the same content is already in place

    def verify_commit(self, sha: str, allowed_signers: str | Path) -> bool:
        """Whether commit `sha` carries a good SSH signature by a key listed in `allowed_signers`
        (git's allowed-signers file, as `ssh-keygen -Y verify` reads it). False for an unsigned
        commit, a bad signature or a key not listed. Raises PermanentError naming the file when
        it cannot be read (signed-commit mode without its keys cannot decide anything), and
        SourceUnavailable naming `sha` when the commit is not in the repository."""
        signers = Path(allowed_signers).resolve()
        if not signers.is_file():
            raise PermanentError(f"{allowed_signers}: allowed-signers file not found (--allowed-signers); "
                                 "list the keys that may sign commits, one '<principal> <key>' per line")
        commit = self.resolve(sha)
        try:
            _git(self.repo, "-c", "gpg.format=ssh", "-c", f"gpg.ssh.allowedSignersFile={signers}", "verify-commit", commit)
        except SourceUnavailable:
            return False
        return True

    def __enter__(self) -> "GitSource":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _cat_file(self) -> subprocess.Popen:
        if self._batch is None or self._batch.poll() is not None:
            self._batch = subprocess.Popen(
                ["git", "cat-file", "--batch"], cwd=self.repo, stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
        return self._batch

    def close(self) -> None:
        if self._batch is not None:
            self._batch.kill()
            self._batch.wait()
            self._batch = None

    def __del__(self) -> None:  # best effort: never leave a cat-file process behind
        try:
            self.close()
        except Exception:
            pass


def _inside_target(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's `data` filter (no absolute paths, no device files, nothing outside `dest`),
    except that a symlink leading out is dropped rather than failing the whole checkout."""
    try:
        return tarfile.data_filter(member, dest)
    except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
        return None


# ----------------------------------------------------------------------------- working copies


def toplevel(path: str | Path) -> Path | None:
    """The top folder of the git working tree that holds `path` (a file or a folder), or None
    when it is in none. For commands a person runs inside their checkout (`ftops validate
    PATH`, `ftops data`, `ftops render`); the controller itself only reads commits."""
    start = Path(path)
    start = start if start.is_dir() else start.parent
    if not start.is_dir():
        return None
    try:
        out = _git(start, "rev-parse", "--show-toplevel").decode().strip()
    except SourceUnavailable:
        return None
    return Path(out) if out else None


def tracked(root: str | Path, rel: str | Path) -> bool:
    """Whether git tracks `rel` (committed or staged) in the working tree at `root`. `rel` is a
    literal path, never a pattern."""
    out = _git(Path(root), "--literal-pathspecs", "ls-files", "-z", "--", str(rel))
    return bool(out.strip(b"\x00"))


class GitTreeView:
    """RepoView over one commit: what exists, and whether a symlink on the way leads out."""

    def __init__(self, source: GitSource, sha: str) -> None:
        self.source = source
        self.sha = sha
        self.entries = source.tree(sha)

    def kind(self, rel: str) -> PathKind:
        parts = rel.strip("/").split("/")
        current: list[str] = []
        for depth, part in enumerate(parts):
            current.append(part)
            joined = "/".join(current)
            entry = self.entries.get(joined)
            if entry is None:
                return "missing"
            if entry.mode == SYMLINK_MODE:
                target = self.source.read_blobs([entry.sha])[entry.sha].decode(errors="replace")
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(joined), target))
                if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                    return "escapes"
                rest = "/".join([resolved, *parts[depth + 1 :]])
                return self.kind(rest)
        entry = self.entries["/".join(parts)]
        return "dir" if entry.kind == "tree" else "file"

    def data_problem(self, rel: str) -> str | None:
        entry = self.entries.get(rel + ".dvc")
        if entry is None or entry.kind != "blob":
            return None
        return parse_dvc_pointer(rel, self.source.read_blobs([entry.sha])[entry.sha], entry.sha).error


class WorkingTreeView:
    """RepoView over a directory on disk (for `ftops validate PATH` before committing)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def kind(self, rel: str) -> PathKind:
        path = self.root / rel
        if not os.path.lexists(path):
            return "missing"
        real = Path(os.path.realpath(path))
        if real != self.root and self.root not in real.parents:
            return "escapes"
        if real.is_dir():
            return "dir"
        return "file" if real.exists() else "missing"

    def data_problem(self, rel: str) -> str | None:
        if self.kind(rel + ".dvc") != "file":
            return None
        return parse_dvc_pointer(rel, (self.root / (rel + ".dvc")).read_bytes()).error


# ----------------------------------------------------------------------------- specs at a revision


class SpecCache:
    """Parsed specs by (path, blob sha, GPU catalog) and data versions by pointer blob: an
    unchanged file is read and parsed once, however many passes or revisions look at it.

    With a `directory` the outcomes also live on disk (`SpecDiskCache`), so a fresh process over
    unchanged specs (`ftops plan` in a new CI job, with the folder restored by the CI cache) is
    warm too: a spec whose blob, GPU catalog, loader code and every tree entry its checks read
    are unchanged is taken from disk without being parsed. `save()` writes what was learnt."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self._parsed: dict[tuple[str, str, tuple[str, ...] | None], LoadedSpec] = {}
        self._data: dict[tuple[str, str, str], DataVersion] = {}
        self._checked: dict[tuple, LoadedSpec] = {}
        self._paths: dict[int, tuple[str, ...]] = {}
        self.disk = SpecDiskCache(Path(directory)) if directory is not None else None

    def load(self, source: "GitSource", files: dict[str, Entry], view: "GitTreeView",
             gpu_types: tuple[str, ...] | None) -> dict[str, LoadedSpec]:
        """Every file of `files` parsed and checked against the commit of `view`: from memory,
        else from disk, else parsed (and remembered in both)."""
        out: dict[str, LoadedSpec] = {}
        todo = dict(files)
        if self.disk is not None:
            for path, entry in files.items():
                if (path, entry.sha, gpu_types) in self._parsed:
                    continue
                hit = self.disk.checked(path, entry.sha, gpu_types, view.entries)
                if hit is not None:
                    out[path] = hit
                    del todo[path]
        parsed = self.specs(source, todo, gpu_types)
        for path, loaded in parsed.items():
            checked = out[path] = self.checked(loaded, view)
            if self.disk is not None:
                paths = self._paths.get(id(loaded), ())
                self.disk.remember(path, todo[path].sha, gpu_types, paths, view.entries, checked)
        return out

    def save(self) -> None:
        if self.disk is not None:
            self.disk.save()

    def checked(self, loaded: LoadedSpec, view: "GitTreeView") -> LoadedSpec:
        """`check_against_repo`, cached on the tree entries it depends on: the entries of every
        path the spec names, their .dvc pointers and every folder on the way (a symlink there
        changes the answer). Unchanged entries, unchanged answer, whatever the commit. A spec
        that failed the schema check is checked too (every mistake is reported at once)."""
        if loaded.located is None:
            return loaded
        paths = self._paths.get(id(loaded))
        if paths is None:
            paths = self._paths[id(loaded)] = _with_parents(repo_paths(loaded))
        entries = view.entries
        key = (id(loaded), tuple(entries.get(p) for p in paths))
        hit = self._checked.get(key)
        if hit is None:
            hit = self._checked[key] = check_against_repo(loaded, view)
        return hit

    def specs(self, source: "GitSource", files: dict[str, Entry], gpu_types: tuple[str, ...] | None) -> dict[str, LoadedSpec]:
        missing = {e.sha for p, e in files.items() if (p, e.sha, gpu_types) not in self._parsed}
        blobs = source.read_blobs(sorted(missing))
        out = {}
        for path, entry in files.items():
            key = (path, entry.sha, gpu_types)
            if key not in self._parsed:
                self._parsed[key] = parse_spec(blobs[entry.sha].decode("utf-8", errors="replace"), path, gpu_types)
            out[path] = self._parsed[key]
        return out

    def data_versions(self, source: "GitSource", entries: dict[str, Entry], paths: Iterable[str]) -> dict[str, DataVersion]:
        """Versions of the datasets at `paths`, from their .dvc pointers or committed files."""
        located: dict[str, tuple[str, str, str]] = {}
        out: dict[str, DataVersion] = {}
        for path in set(paths):
            pointer, direct = entries.get(path + ".dvc"), entries.get(path)
            if pointer is not None and pointer.kind == "blob":
                located[path] = (path, "dvc", pointer.sha)
            elif direct is not None and direct.kind == "blob":
                located[path] = (path, "git", direct.sha)
            else:
                out[path] = DataVersion(path, None, None, None, "missing")
        if self.disk is not None:
            for key in located.values():
                if key not in self._data:
                    known = self.disk.data_version(key)
                    if known is not None:
                        self._data[key] = known
        blobs = source.read_blobs(sorted({key[2] for key in located.values() if key not in self._data}))
        for path, key in located.items():
            if key not in self._data:
                content = blobs[key[2]]
                if key[1] == "dvc":
                    self._data[key] = parse_dvc_pointer(path, content, key[2])
                else:
                    examples = sum(1 for line in content.splitlines() if line.strip())
                    self._data[key] = DataVersion(path, hashlib.md5(content).hexdigest(), len(content), examples, "git")
                if self.disk is not None:
                    self.disk.remember_data(key, self._data[key])
            out[path] = self._data[key]
        return out


def default_cache_dir() -> Path:
    """Where `ftops plan` keeps its spec cache: $XDG_CACHE_HOME/ftops, else ~/.cache/ftops."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ftops"


class SpecDiskCache:
    """Checked specs and data versions in one SQLite file (`<directory>/specs.sqlite`).

    A spec's entry is keyed by what decides its outcome: its path, blob sha and GPU catalog, the
    loader's own code (a new ftops version validates again), and the tree entries of every path
    its repository checks read (so a deleted dataset or a new symlink is seen). Values are JSON:
    the model as its aliased JSON dump (validated again on the way in by pydantic's JSON parser,
    a fraction of the cost of loading the YAML), the issues, and the line of spec.dataset.path (the one location the plan
    reports without re-reading the file). No pickle. A corrupt or unreadable file is started
    afresh: the cache only ever saves work."""

    FORMAT = 1

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._db: "sqlite3.Connection | None" = None
        self._pending: dict[str, str] = {}
        self._paths: dict[tuple[str, str, tuple[str, ...] | None], tuple[str, ...] | None] = {}
        self._read: dict[str, LoadedSpec] = {}
        """Outcomes already read back in this process (a plan reads base and head: mostly the same)."""

    # -- keys

    @staticmethod
    def _key(*parts: object) -> str:
        return hashlib.sha256(repr((SpecDiskCache.FORMAT, loader_version(), *parts)).encode()).hexdigest()

    def _spec_key(self, path: str, blob: str, gpu_types: tuple[str, ...] | None) -> str:
        return self._key("paths", path, blob, gpu_types)

    # -- specs

    def checked(self, path: str, blob: str, gpu_types: tuple[str, ...] | None, entries: dict[str, Entry]) -> LoadedSpec | None:
        memo = (path, blob, gpu_types)
        if memo not in self._paths:
            raw = self._get(self._spec_key(path, blob, gpu_types))
            self._paths[memo] = tuple(json.loads(raw)) if raw is not None else None
        paths = self._paths[memo]
        if paths is None:
            return None
        key = self._key("checked", path, blob, gpu_types, tuple(entries.get(p) for p in paths))
        if key in self._read:
            return self._read[key]
        raw = self._get(key)
        if raw is None:
            return None
        try:
            loaded = self._read[key] = _loaded_from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError):
            return None
        return loaded

    def remember(self, path: str, blob: str, gpu_types: tuple[str, ...] | None, paths: tuple[str, ...],
                 entries: dict[str, Entry], loaded: LoadedSpec) -> None:
        self._pending[self._spec_key(path, blob, gpu_types)] = json.dumps(list(paths))
        self._paths[(path, blob, gpu_types)] = paths
        key = self._key("checked", path, blob, gpu_types, tuple(entries.get(p) for p in paths))
        self._pending[key] = json.dumps(_loaded_to_json(loaded))

    # -- data versions

    def data_version(self, key: tuple[str, str, str]) -> DataVersion | None:
        raw = self._get(self._key("data", key))
        if raw is None:
            return None
        try:
            return DataVersion(**json.loads(raw))
        except (ValueError, TypeError):
            return None

    def remember_data(self, key: tuple[str, str, str], version: DataVersion) -> None:
        from dataclasses import asdict

        self._pending[self._key("data", key)] = json.dumps(asdict(version))

    # -- storage

    def _connect(self) -> "sqlite3.Connection | None":
        import sqlite3

        if self._db is None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.directory / "specs.sqlite", timeout=10)
                self._db.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            except (OSError, sqlite3.Error):
                self._db = None
        return self._db

    def _get(self, key: str) -> str | None:
        import sqlite3

        db = self._connect()
        if db is None:
            return None
        try:
            row = db.execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError:
            self._reset()
            return None
        return row[0] if row else None

    def save(self) -> None:
        import sqlite3

        if not self._pending:
            return
        db = self._connect()
        if db is None:
            return
        try:
            with db:
                db.executemany("INSERT OR REPLACE INTO entries (key, value) VALUES (?, ?)", self._pending.items())
        except sqlite3.DatabaseError:
            self._reset()
            return
        self._pending.clear()

    def _reset(self) -> None:
        """A damaged file (a killed writer, a full disk): start afresh rather than fail a plan."""
        if self._db is not None:
            self._db.close()
            self._db = None
        (self.directory / "specs.sqlite").unlink(missing_ok=True)


_LOADER_VERSION: list[str] = []


def loader_version() -> str:
    """A hash of the code that decides a spec's outcome (controller/spec and this module): a
    cached outcome from another ftops version is never used."""
    if not _LOADER_VERSION:
        digest = hashlib.sha256()
        here = Path(__file__).resolve().parent
        for file in sorted([*(here / "spec").glob("*.py"), here / "source.py"]):
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
        _LOADER_VERSION.append(digest.hexdigest()[:16])
    return _LOADER_VERSION[0]


def _loaded_to_json(loaded: LoadedSpec) -> dict:
    from dataclasses import asdict

    line = None
    if loaded.located is not None:
        line = loaded.located.lines.get(("spec", "dataset", "path"))
    return {"file": loaded.file, "spec": loaded.spec.model_dump_json(by_alias=True) if loaded.spec else None,
            "issues": [asdict(i) for i in loaded.issues], "datasetLine": line}


def _loaded_from_json(data: dict) -> LoadedSpec:
    from controller.spec.finetune import FineTune
    from controller.spec.load import SpecIssue
    from controller.spec.yamlsafe import Located

    spec = FineTune.model_validate_json(data["spec"]) if data["spec"] is not None else None
    lines = {("spec", "dataset", "path"): data["datasetLine"]} if data.get("datasetLine") else {}
    return LoadedSpec(data["file"], spec, tuple(SpecIssue(**i) for i in data["issues"]), Located(None, lines=lines))


@dataclass(frozen=True)
class SpecAtRev:
    """One spec file at one commit: its blob, the validation outcome and its data version."""

    path: str
    blob: str
    loaded: LoadedSpec
    data: DataVersion | None
    replay: DataVersion | None = None
    """The version of spec.training.replay.path (None when the spec replays nothing)."""


def _versions_of(cache: "SpecCache", source: GitSource, entries: dict[str, Entry],
                 loaded: LoadedSpec) -> tuple[DataVersion | None, DataVersion | None]:
    """(dataset version, replay file version) of a valid spec at the tree `entries`."""
    if loaded.spec is None:
        return None, None
    dataset, replay = loaded.spec.spec.dataset.path, loaded.spec.spec.training.replay
    versions = cache.data_versions(source, entries, [dataset] + ([replay.path] if replay is not None else []))
    return versions[dataset], versions[replay.path] if replay is not None else None


def _with_parents(paths: Iterable[str]) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for path in paths:
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            out["/".join(parts[:depth])] = None
    return tuple(out)


def spec_paths(entries: dict[str, Entry]) -> dict[str, Entry]:
    """specs/<name>.yaml (or .yml) files directly in specs/."""
    return {
        path: entry
        for path, entry in entries.items()
        if entry.kind == "blob"
        and path.startswith(SPECS_DIR + "/")
        and path.count("/") == 1
        and path.endswith((".yaml", ".yml"))
    }


def load_specs_at(
    source: GitSource, sha: str, cache: SpecCache | None = None, gpu_types: Iterable[str] | None = None
) -> dict[str, SpecAtRev]:
    """Every spec at commit `sha`, keyed by file path, validated against that commit's tree.
    Invalid specs are returned too (with their issues): one bad spec never hides the others."""
    cache = cache or SpecCache()
    catalog = tuple(sorted(gpu_types)) if gpu_types is not None else None
    entries = source.tree(sha)
    files = spec_paths(entries)
    view = GitTreeView(source, sha)
    checked = cache.load(source, files, view, catalog)
    return {path: SpecAtRev(path, files[path].sha, loaded, *_versions_of(cache, source, entries, loaded))
            for path, loaded in sorted(checked.items())}


def dataset_version(source: GitSource, sha: str, path: str, cache: SpecCache | None = None) -> DataVersion:
    """The data version pinned at `sha`: the md5 in `<path>.dvc` (as DVC records it), or the md5
    of the file itself when it is committed to git directly."""
    return (cache or SpecCache()).data_versions(source, source.tree(sha), [path])[path]


def parse_dvc_pointer(path: str, content: bytes, blob: str | None = None) -> DataVersion:
    """Read md5, size and ftops' recorded example count from a .dvc file. Never raises: a broken
    pointer is reported on the spec that uses it, not by failing every spec."""
    try:
        doc = yaml.load(content, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        out = (doc.get("outs") or [{}])[0]
        md5 = out.get("md5")
        size = out.get("size")
        meta = ((doc.get("meta") or {}).get("ftops") or {}) if isinstance(doc.get("meta"), dict) else {}
        examples = meta.get("examples") if isinstance(meta, dict) else None
        tokens = meta.get("tokens") if isinstance(meta, dict) else None
    except (yaml.YAMLError, AttributeError, IndexError, TypeError):
        return DataVersion(path, None, None, None, "invalid", blob, f"{path}.dvc is not a valid DVC pointer file: re-create it with `ftops data version`")
    if not isinstance(md5, str) or not re.match(r"^[0-9a-f]{32}(\.dir)?$", md5):
        return DataVersion(path, None, None, None, "invalid", blob, f"{path}.dvc has no valid md5 under outs: re-create it with `ftops data version`")
    return DataVersion(path, md5, size if isinstance(size, int) else None, examples if isinstance(examples, int) else None, "dvc", blob,
                       tokens=tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None)


def corpus_version(source: GitSource, sha: str, path: str) -> str | None:
    """The version of a RAG corpus folder at `sha`: its .dvc md5, or the git tree hash."""
    entries = source.tree(sha)
    pointer = entries.get(path + ".dvc")
    if pointer is not None and pointer.kind == "blob":
        version = parse_dvc_pointer(path, source.read_blobs([pointer.sha])[pointer.sha], pointer.sha)
        return version.md5
    folder = entries.get(path)
    return f"git:{folder.sha}" if folder is not None else None


def changed_paths(source: GitSource, old: str, new: str) -> list[str]:
    """Paths that differ between two commits (`git diff-tree`), without rename detection."""
    out = _git(source.repo, "diff-tree", "-r", "-z", "--no-renames", "--name-only", old, new)
    return [p.decode() for p in out.split(b"\x00") if p]


def load_specs_incremental(
    source: GitSource, previous: tuple[str, dict[str, SpecAtRev]] | None, sha: str,
    cache: SpecCache | None = None, gpu_types: Iterable[str] | None = None,
) -> dict[str, SpecAtRev]:
    """The specs at `sha`, reusing the result for the previous commit when only spec files
    changed: a commit that edits one spec costs one spec's work, however many there are.
    Any change outside specs/ (data pointers, reviews, models, corpora) reloads everything,
    which is itself cached by blob hash."""
    if previous is None or previous[0] == sha:
        return previous[1] if previous is not None else load_specs_at(source, sha, cache, gpu_types)
    old, specs = previous
    changed = changed_paths(source, old, sha)
    if any(not (p.startswith(SPECS_DIR + "/") and p.count("/") == 1) for p in changed):
        return load_specs_at(source, sha, cache, gpu_types)
    cache = cache or SpecCache()
    catalog = tuple(sorted(gpu_types)) if gpu_types is not None else None
    entries = source.tree(sha)
    files = {p: e for p, e in spec_paths(entries).items() if p in changed}
    result = {p: s for p, s in specs.items() if p not in changed}
    if files:
        view = GitTreeView(source, sha)
        for path, loaded in cache.load(source, files, view, catalog).items():
            result[path] = SpecAtRev(path, files[path].sha, loaded, *_versions_of(cache, source, entries, loaded))
    return dict(sorted(result.items()))
