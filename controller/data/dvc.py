"""The DVC adapter: version a dataset (`dvc add` + `dvc push`) and pull it at an exact git
revision, trusting nothing DVC reports without checking the bytes.

DVC is run as a subprocess (`python -m dvc`, analytics off) so a DVC failure can never take the
controller down with it, and so the exact DVC that requirements.lock pins is the one used.

Why so many checks: in real runs DVC
- exits 0 on `dvc push` with "Everything is up to date" when the cache object is corrupted, and
  pushes nothing;
- reports an unreachable remote on pull as "missing cache files", like a missing object;
- would check out whatever bytes an object holds if a .dvc file's md5 is edited to point at
  another object, or delete an "unsaved" workspace file on `dvc checkout --force`.
So `version` re-hashes the workspace file and the pushed remote object, and restores the old
.dvc pointer if anything fails (nobody can commit a pointer to data that is not in the remote);
`pull` never touches a user's working copy: it builds a scratch workspace from the `.dvc` pointer
and DVC config committed at that revision, pulls there, re-hashes the result against the
pointer's md5 and size, and only then copies it to a destination that must not already hold
different data. Nothing here deletes or overwrites existing data.

Remotes: a local directory by default. S3 works through the `dvc-s3` plugin (not installed by
default: `pip install dvc-s3`, then `ftops data version --remote s3://bucket/prefix`); for
remotes other than a local directory the post-push check asks DVC (`dvc status --cloud`).
"""
from __future__ import annotations

import configparser
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from controller import source
from controller.errors import FtopsError, PermanentError, TemporaryError

_MD5 = re.compile(r"^[0-9a-f]{32}$")
DVC_TIMEOUT_S = 1800


class DvcError(FtopsError):
    """Base of every DVC adapter error; the message says what happened, where, and what to do."""


class DvcFailed(DvcError, PermanentError):
    """DVC itself failed in a way this adapter does not classify; its output is included."""


class RemoteUnreachable(DvcError, TemporaryError):
    """The remote could not be reached. Retrying later may help."""


class RemoteNotConfigured(DvcError, PermanentError):
    """No DVC remote is configured where one is needed."""


class ObjectMissing(DvcError, PermanentError):
    """The object a .dvc pointer names is not in the remote: an unfinished push or a hand edit."""


class DataCorrupted(DvcError, PermanentError):
    """Bytes do not hash to what their name or pointer says."""


class PointerInvalid(DvcError, PermanentError):
    """A .dvc file is missing or malformed."""


class DestinationConflict(DvcError, PermanentError):
    """The destination already holds different data; it is never replaced."""


# ---------------------------------------------------------------- helpers


def file_md5(path: str | Path) -> tuple[str, int]:
    """md5 and size of a file, streamed (DVC 3 pins the plain md5 of a file's bytes)."""
    h = hashlib.md5()
    size = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def _env() -> dict[str, str]:
    """DVC's environment. Its site cache (locks, indexes) defaults to /var/tmp/dvc, which a
    container with a read-only root cannot write: unless the operator set DVC_SITE_CACHE_DIR, it
    goes under the temporary directory (an emptyDir in a pod)."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_TERMINAL_PROMPT="0", DVC_IGNORE_ISATTY="true")
    env.setdefault("DVC_SITE_CACHE_DIR", str(Path(tempfile.gettempdir()) / "dvc-site-cache"))
    return env


def _global_configs() -> list[str]:
    """DVC's system and global config texts (lowest precedence, as DVC's own levels): where an
    operator names the default remote for every repository, e.g. the chart's DVC_GLOBAL_CONFIG_DIR."""
    out = []
    for var in ("DVC_SYSTEM_CONFIG_DIR", "DVC_GLOBAL_CONFIG_DIR"):
        folder = os.environ.get(var)
        if folder and (Path(folder) / "config").is_file():
            out.append((Path(folder) / "config").read_text(encoding="utf-8"))
    return out


def run_dvc(args: list[str], cwd: str | Path, timeout: float = DVC_TIMEOUT_S) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RemoteUnreachable(f"`dvc {' '.join(args)}` in {cwd} did not finish within {timeout:.0f}s; check the remote and retry") from None


def _tail(proc: subprocess.CompletedProcess, lines: int = 8) -> str:
    text = "\n".join(x for x in (proc.stderr or "").splitlines() + (proc.stdout or "").splitlines() if x.strip())
    return "\n    ".join(text.splitlines()[-lines:]) or "(no output)"


@dataclass(frozen=True)
class Pointer:
    """What a .dvc file pins: the md5 and size of one file, and ftops' meta block."""

    path: str  # of the .dvc file, for messages
    md5: str
    size: int | None
    meta: dict[str, Any]


def parse_pointer(text: str, where: str) -> Pointer:
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise PointerInvalid(f"{where}{line}: not valid YAML ({getattr(exc, 'problem', exc)}); restore it from git or re-create it with `ftops data version`") from None
    outs = doc.get("outs") if isinstance(doc, dict) else None
    if not isinstance(outs, list) or len(outs) != 1 or not isinstance(outs[0], dict):
        raise PointerInvalid(f"{where}: outs: expected exactly one tracked file; re-create the pointer with `ftops data version`")
    md5 = outs[0].get("md5")
    if not isinstance(md5, str) or not _MD5.match(md5):
        extra = " (a directory is tracked; spec.dataset.path must be one JSONL file)" if isinstance(md5, str) and md5.endswith(".dir") else ""
        raise PointerInvalid(f"{where}: outs[0].md5: {md5!r} is not a 32-hex md5{extra}; was it edited by hand? Restore it with `git checkout` or re-create it with `ftops data version`")
    size = outs[0].get("size")
    meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
    return Pointer(where, md5, size if isinstance(size, int) else None, meta)


def _object_path(root: Path, md5: str) -> Path:
    return root / "files" / "md5" / md5[:2] / md5[2:]


@dataclass(frozen=True)
class Remote:
    name: str
    url: str
    local: Path | None  # absolute directory for a local remote


def _read_config(text: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.read_string(text)
    return cp


def _remotes(config_texts: list[str], base: Path) -> tuple[dict[str, Remote], str | None]:
    """Remotes and the default one, from DVC config texts (later ones win, as DVC's levels do).
    Relative local URLs are resolved against `base` (the .dvc directory they were written in)."""
    remotes: dict[str, Remote] = {}
    default = None
    for text in config_texts:
        cp = _read_config(text)
        for section in cp.sections():
            m = re.match(r"""^\s*'?remote\s+"([^"]+)"'?\s*$""", section)
            if m and cp.has_option(section, "url"):
                url = cp.get(section, "url")
                remotes[m.group(1)] = _remote(m.group(1), url, base)
            if section.strip() == "core" and cp.has_option(section, "remote"):
                default = cp.get(section, "remote")
    return remotes, default


def _remote(name: str, url: str, base: Path) -> Remote:
    parsed = urlparse(url)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and url[1:3] == ":\\"):
        path = Path(parsed.path if parsed.scheme == "file" else url)
        if not path.is_absolute():
            path = (base / path).resolve()
        return Remote(name, url, path)
    return Remote(name, url, None)


def probe(remote: Remote, timeout: float = 5.0) -> None:
    """Fail fast, and clearly, when a remote cannot be reached. A local remote must be an
    existing directory: DVC would otherwise create it (say, under an unmounted mount point) and
    push into a directory nobody else sees."""
    if remote.local is not None:
        if not remote.local.is_dir():
            what = "is not a directory" if remote.local.exists() else "does not exist"
            raise RemoteUnreachable(
                f"DVC remote '{remote.name}' ({remote.local}) {what}: mount or create the storage directory, "
                f"or point the remote elsewhere with `dvc remote modify {remote.name} url <dir>`. Nothing was changed."
            )
        return
    parsed = urlparse(remote.url)
    if parsed.scheme in ("http", "https", "ssh", "sftp", "webdav", "webdavs") and parsed.hostname:
        port = parsed.port or {"http": 80, "https": 443, "ssh": 22, "sftp": 22, "webdav": 80, "webdavs": 443}[parsed.scheme]
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
        except OSError as exc:
            raise RemoteUnreachable(
                f"DVC remote '{remote.name}' ({remote.url}) is unreachable: {exc.strerror or exc}. "
                "Check the URL, the network and credentials, then retry. Nothing was changed."
            ) from None


# ---------------------------------------------------------------- version


@dataclass(frozen=True)
class Versioned:
    path: str
    dvc_file: Path
    md5: str
    size: int
    remote: str | None
    pushed: bool
    meta: dict[str, Any]


def _configs(repo: Path) -> list[str]:
    out = []
    for name in ("config", "config.local"):
        p = repo / ".dvc" / name
        if p.is_file():
            out.append(p.read_text(encoding="utf-8"))
    return out


def ensure_dvc_repo(repo: Path) -> None:
    """`dvc init` a git repository that has no .dvc directory yet, with analytics off."""
    if (repo / ".dvc").is_dir():
        return
    proc = run_dvc(["init", "-q"], repo)
    if proc.returncode != 0:
        raise DvcFailed(f"{repo}: `dvc init` failed:\n    {_tail(proc)}\nIs it a git repository? (`git init` first)")
    run_dvc(["config", "core.analytics", "false"], repo)


def version(
    repo: str | Path,
    data_path: str,
    remote_url: str | None = None,
    meta: dict[str, Any] | None = None,
    push: bool = True,
) -> Versioned:
    """`dvc add` + `dvc push` one dataset file, with every result verified.

    `remote_url` (optional) configures a remote named 'ftops' and makes it the default; a local
    directory is created only then (an explicit request), never implicitly. `meta` is written to
    the pointer as `meta: {ftops: ...}` so `ftops plan` can read counts from git without pulling.
    On any failure the previous .dvc file is put back byte for byte (or the new one removed) and
    the workspace file is never modified."""
    root = Path(repo).resolve()
    rel = Path(data_path)
    if rel.is_absolute():
        try:
            rel = rel.resolve().relative_to(root)
        except ValueError:
            raise PermanentError(f"{data_path}: is outside the repository {root}; datasets must live inside the repo") from None
    data = root / rel
    if not data.is_file():
        raise PermanentError(f"{rel}: no such file in {root}; write the dataset there first (spec.dataset.path)")
    if source.toplevel(root) is None:
        raise PermanentError(f"{root}: not a git repository; datasets are versioned next to the specs that use them (`git init` first)")
    if source.tracked(root, rel):
        raise PermanentError(
            f"{rel}: is committed to git directly, so DVC cannot take it over. To version it with DVC, untrack it "
            f"(`git rm --cached {rel}`; the file stays on disk), then run `ftops data version {rel}` again and commit the "
            f"change together with {rel}.dvc. Nothing was changed."
        )
    ensure_dvc_repo(root)

    if remote_url:
        # A relative directory means relative to where the command was typed; DVC is told the
        # absolute path so nobody has to guess what it was relative to.
        local = _remote("ftops", remote_url, Path.cwd())
        if local.local is not None:
            local.local.mkdir(parents=True, exist_ok=True)
            remote_url = str(local.local)
        for args in (["remote", "add", "--force", "--default", "ftops", remote_url],):
            proc = run_dvc(args, root)
            if proc.returncode != 0:
                raise DvcFailed(f"{root}: could not configure remote {remote_url}:\n    {_tail(proc)}")
    remotes, default = _remotes(_configs(root), root / ".dvc")
    remote = remotes.get(default) if default else None
    if push and remote is None:
        raise RemoteNotConfigured(
            f"{root}: no default DVC remote is configured: pass --remote DIR (a local directory, the default kind) "
            "or `dvc remote add -d storage s3://bucket/prefix` (needs `pip install dvc-s3`)"
        )
    if push and remote is not None:
        probe(remote)

    md5, size = file_md5(data)
    dvc_file = data.with_name(data.name + ".dvc")
    backup = dvc_file.read_bytes() if dvc_file.exists() else None

    def restore() -> None:
        if backup is None:
            dvc_file.unlink(missing_ok=True)
        else:
            dvc_file.write_bytes(backup)

    # DVC itself deletes a corrupted cache object on push and exits 0 having pushed nothing (seen
    # in tests/data/test_dvc.py); check it before DVC runs, and keep it as evidence.
    cache_obj = _cache_dir(root) / "files" / "md5" / md5[:2] / md5[2:]
    if cache_obj.is_file():
        cached_md5, _ = file_md5(cache_obj)
        if cached_md5 != md5:
            raise DataCorrupted(
                f"DVC cache object {cache_obj} is corrupted (its bytes hash to {cached_md5}, its name says {md5}); DVC would delete it "
                f"and report success without pushing. Move that file out of the cache (e.g. `mv {cache_obj} /tmp/`) and run "
                f"`ftops data version {rel}` again: it re-creates the object from the workspace file, which is intact. Nothing was changed."
            )

    try:
        proc = run_dvc(["add", str(rel)], root)
        if proc.returncode != 0:
            raise DvcFailed(f"{rel}: `dvc add` failed:\n    {_tail(proc)}")
        pointer = parse_pointer(dvc_file.read_text(encoding="utf-8"), str(rel) + ".dvc")
        now_md5, now_size = file_md5(data)
        if (now_md5, now_size) != (md5, size):
            raise DataCorrupted(f"{rel} changed while it was being versioned (md5 {md5} -> {now_md5}); stop the writer and run `ftops data version` again")
        if pointer.md5 != md5 or (pointer.size is not None and pointer.size != size):
            raise DataCorrupted(f"{rel}.dvc: DVC recorded md5 {pointer.md5} / {pointer.size} bytes, but the file is {md5} / {size} bytes; nothing was pushed")
        info = {"md5": md5, "examples": None, "bytes": size}
        if meta:
            info.update(meta)
        info["md5"], info["bytes"] = md5, size
        _write_meta(dvc_file, info)
        pushed = False
        if push and remote is not None and remote.local is not None:
            obj = _object_path(remote.local, md5)
            if obj.is_file() and file_md5(obj)[0] != md5:
                raise DataCorrupted(
                    f"{rel}: remote object {obj} is corrupted (its bytes hash to {file_md5(obj)[0]}, its name says {md5}); pushing would not "
                    f"repair it. Move it out of the remote and run `ftops data version {rel}` again. {rel}.dvc was left as it was before."
                )
        if push and remote is not None:
            proc = run_dvc(["push", "-r", remote.name, str(rel) + ".dvc"], root)
            _verify_pushed(root, rel, remote, md5, proc)
            pushed = True
    except BaseException:
        restore()
        raise
    return Versioned(str(rel), dvc_file, md5, size, remote.name if remote else None, pushed, info)


def _cache_dir(root: Path) -> Path:
    remotes_cfg = _configs(root)
    for text in reversed(remotes_cfg):
        cp = _read_config(text)
        for section in cp.sections():
            if section.strip() == "cache" and cp.has_option(section, "dir"):
                d = Path(cp.get(section, "dir"))
                return d if d.is_absolute() else (root / ".dvc" / d).resolve()
    return root / ".dvc" / "cache"


def _write_meta(dvc_file: Path, info: dict[str, Any]) -> None:
    """Put `meta: {ftops: info}` in the pointer, keeping everything DVC wrote (and any other
    meta keys a person added). DVC keeps `meta` when it re-adds the file, so a stale block is
    possible after a plain `dvc add`: `md5` inside it lets readers notice."""
    import yaml

    doc = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
    meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
    meta["ftops"] = {k: v for k, v in info.items() if v is not None}
    doc["meta"] = meta
    dvc_file.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


def _verify_pushed(root: Path, rel: Path, remote: Remote, md5: str, proc: subprocess.CompletedProcess) -> None:
    dvc_name = f"{rel}.dvc"
    if proc.returncode != 0:
        text = (proc.stderr or "") + (proc.stdout or "")
        if re.search(r"connect|unreachable|timed out|resolve|network|Name or service", text, re.I):
            raise RemoteUnreachable(f"{rel}: `dvc push` to '{remote.name}' ({remote.url}) could not reach the remote:\n    {_tail(proc)}\n"
                                    f"{dvc_name} was left as it was before; retry when the remote is back.")
        raise DvcFailed(f"{rel}: `dvc push` to '{remote.name}' ({remote.url}) failed, so the push is incomplete:\n    {_tail(proc)}\n"
                        f"{dvc_name} was left as it was before, so it cannot be committed pointing at data the remote lacks. Fix the remote and retry.")
    if remote.local is not None:
        obj = _object_path(remote.local, md5)
        if not obj.is_file():
            raise ObjectMissing(
                f"{rel}: `dvc push` exited 0 but object {md5} is not in remote '{remote.name}' ({obj}): the push is incomplete. "
                f"{dvc_name} was left as it was before. Check the DVC cache (a corrupted cache object is skipped silently) and retry."
            )
        got, _ = file_md5(obj)
        if got != md5:
            raise DataCorrupted(
                f"{rel}: remote object {obj} is corrupted (its bytes hash to {got}, its name says {md5}); DVC will not overwrite it. "
                f"Move it out of the remote and run `ftops data version {rel}` again. {dvc_name} was left as it was before."
            )
        return
    status = run_dvc(["status", "--cloud", "--json", "-r", remote.name, dvc_name], root)
    if status.returncode != 0 or status.stdout.strip() not in ("{}", ""):
        raise ObjectMissing(f"{rel}: after `dvc push`, `dvc status --cloud` still reports the data missing from '{remote.name}' "
                            f"({status.stdout.strip() or _tail(status)}); the push is incomplete. {dvc_name} was left as it was before.")


# ---------------------------------------------------------------- pull


@dataclass(frozen=True)
class Pulled:
    path: Path
    md5: str
    size: int
    rev: str
    reused: bool  # the destination already held exactly this data; DVC was not run


def _text(blob: bytes | None, rel: str, sha: str) -> str | None:
    if blob is None:
        return None
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError:
        raise PointerInvalid(f"{rel} at {sha[:12]}: not UTF-8 text; restore it from git or re-create it with `ftops data version`") from None


def pull(repo: str | Path, rev: str, data_path: str, dest: str | Path, cache_dir: str | Path | None = None) -> Pulled:
    """Materialise `data_path` as pinned by `<data_path>.dvc` at git revision `rev` into `dest`.

    DVC runs in a throw-away scratch workspace holding only the pointer and the DVC config from
    that revision (plus this machine's `.dvc/config.local`), never in the user's working copy.
    The result is re-hashed against the pointer's md5 and size before it is copied out. `dest`
    is written only if absent; if it already holds the same bytes it is reused."""
    root = Path(repo).resolve()
    dest = Path(dest)
    with source.GitSource(root) as repository:  # the pointer and DVC config as committed at `rev`
        sha = repository.resolve(rev)
        pointer_rel = f"{data_path}.dvc"
        text = _text(repository.show(sha, pointer_rel), pointer_rel, sha)
        config_text = _text(repository.show(sha, ".dvc/config"), ".dvc/config", sha)
    if text is None:
        raise PointerInvalid(f"{pointer_rel}: not found at {sha[:12]}; version the dataset with `ftops data version {data_path}` and commit the pointer")
    pointer = parse_pointer(text, f"{pointer_rel}@{sha[:12]}")

    if dest.exists():
        got, size = file_md5(dest)
        if got == pointer.md5:
            return Pulled(dest, got, size, sha, True)
        raise DestinationConflict(f"{dest}: already exists with md5 {got}, not {pointer.md5} as pinned at {sha[:12]}; it is left untouched. Choose another destination.")

    globals_ = _global_configs()
    if config_text is None and not globals_:
        raise RemoteNotConfigured(f"{root}: no .dvc/config at {sha[:12]}, so there is no DVC remote to pull from; commit one (`dvc remote add -d ...`)")
    config_text = config_text or ""
    local_cfg = root / ".dvc" / "config.local"
    configs = globals_ + [config_text] + ([local_cfg.read_text(encoding="utf-8")] if local_cfg.is_file() else [])
    remotes, default = _remotes(configs, root / ".dvc")
    remote = remotes.get(default) if default else None
    if remote is None:
        raise RemoteNotConfigured(f"{root}/.dvc/config at {sha[:12]}: no default remote (core.remote) there or in the operator's DVC "
                                  "config (DVC_GLOBAL_CONFIG_DIR); `dvc remote add -d storage <dir or s3://...>` and commit it")
    probe(remote)
    # DVC 3 deletes an object that fails its hash check on pull, from a local remote too (seen
    # in tests/data/test_dvc.py). Check the bytes first, so a corrupted object is reported and kept
    # as evidence instead of silently destroyed.
    suspects = [("remote", _object_path(remote.local, pointer.md5))] if remote.local is not None else []
    if cache_dir is not None:
        suspects.append(("cache", _object_path(Path(cache_dir).resolve(), pointer.md5)))
    for kind, obj in suspects:
        if obj.is_file():
            got, _ = file_md5(obj)
            if got != pointer.md5:
                raise DataCorrupted(
                    f"{data_path}: {kind} object {obj} is corrupted (its bytes hash to {got}, its name and {pointer_rel} at {sha[:12]} say "
                    f"{pointer.md5}). It was not pulled and is left in place as evidence. Re-push the data from a machine that has it "
                    "intact (move the bad object aside first). Nothing was written."
                )

    with tempfile.TemporaryDirectory(prefix="ftops-pull-") as scratch_dir:
        scratch = Path(scratch_dir)  # not a git repository: core.no_scm below
        (scratch / ".dvc").mkdir()
        (scratch / ".dvc" / "config").write_text(config_text, encoding="utf-8")
        # This machine's config.local (credentials kept outside git) still applies; remote URLs are
        # made absolute (relative ones are relative to the user's .dvc directory, not the scratch).
        local = _read_config(local_cfg.read_text(encoding="utf-8")) if local_cfg.is_file() else configparser.ConfigParser(interpolation=None)
        if not local.has_section("core"):
            local.add_section("core")
        local.set("core", "remote", remote.name)
        local.set("core", "analytics", "false")
        local.set("core", "no_scm", "true")  # DVC needs no git here: nothing in the scratch is ever committed
        for r in remotes.values():
            section = f"'remote \"{r.name}\"'"
            if not local.has_section(section):
                local.add_section(section)
            local.set(section, "url", str(r.local) if r.local is not None else r.url)
        if cache_dir is not None:
            if not local.has_section("cache"):
                local.add_section("cache")
            local.set("cache", "dir", str(Path(cache_dir).resolve()))
        with open(scratch / ".dvc" / "config.local", "w", encoding="utf-8") as fh:
            local.write(fh)
        target = scratch / data_path
        target.parent.mkdir(parents=True, exist_ok=True)
        (scratch / pointer_rel).write_text(text, encoding="utf-8")
        proc = run_dvc(["pull", "-r", remote.name, pointer_rel], scratch)
        if proc.returncode != 0 or not target.is_file():
            _explain_pull_failure(proc, remote, pointer, data_path, sha, cache_dir)
        got, size = file_md5(target)
        if got != pointer.md5:
            raise DataCorrupted(
                f"{data_path}: pulled at {sha[:12]} from '{remote.name}' ({remote.url}), the data hashes to {got}, but {pointer_rel} pins {pointer.md5}; "
                "the object in the remote or cache is corrupted. Nothing was written to the destination."
            )
        if pointer.size is not None and size != pointer.size:
            raise DataCorrupted(
                f"{pointer_rel}@{sha[:12]}: outs[0].size says {pointer.size} bytes but the data pinned by its md5 has {size}; "
                "the .dvc file was edited by hand. Restore it from git history or re-create it with `ftops data version`. Nothing was written."
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        os.close(fd)
        try:
            shutil.copyfile(target, tmp)
            try:
                os.link(tmp, dest)  # fails instead of replacing if dest appeared meanwhile
            except FileExistsError:
                if file_md5(dest)[0] != pointer.md5:
                    raise DestinationConflict(f"{dest}: appeared during the pull with other data; it is left untouched") from None
        finally:
            Path(tmp).unlink(missing_ok=True)
    return Pulled(dest, got, size, sha, False)


def _explain_pull_failure(proc, remote: Remote, pointer: Pointer, data_path: str, sha: str, cache_dir) -> None:
    where = f"{pointer.path.split('@')[0]} at {sha[:12]}"
    if remote.local is not None:
        obj = _object_path(remote.local, pointer.md5)
        if obj.is_file():
            got, _ = file_md5(obj)
            if got != pointer.md5:
                raise DataCorrupted(
                    f"{data_path}: remote object {obj} is corrupted (its bytes hash to {got}, its name says {pointer.md5}), so DVC refused it. "
                    "Re-push the data from a machine that has it intact (move the bad object out of the remote first). Nothing was written."
                )
        else:
            raise ObjectMissing(
                f"{data_path}: object {pointer.md5} pinned by {where} is not in remote '{remote.name}' ({remote.local}). "
                "Either the push that recorded it never finished (partial push: run `ftops data version` where the data is), "
                f"or the md5 in {pointer.path.split('@')[0]} was edited by hand (restore it from git history). Nothing was written."
            )
    text = (proc.stderr or "") + (proc.stdout or "")
    if re.search(r"connect|unreachable|timed out|resolve host|network", text, re.I):
        raise RemoteUnreachable(f"{data_path}: could not reach remote '{remote.name}' ({remote.url}) to pull {where}:\n    {_tail(proc)}")
    if "missing" in text.lower():
        raise ObjectMissing(
            f"{data_path}: DVC reports object {pointer.md5} pinned by {where} missing from remote '{remote.name}' ({remote.url}): "
            "an unfinished push or a hand-edited .dvc md5. Nothing was written."
        )
    raise DvcFailed(f"{data_path}: `dvc pull` of {where} from '{remote.name}' failed:\n    {_tail(proc)}\nNothing was written.")
