"""The container runtime's half of the process kubelet: a standalone script (stdlib only, run as
`python -I -S sandbox.py ...` so no site-packages and no PYTHON* variable of the pod affect it)
that puts one container into its namespaces and execs its command.

    sandbox.py pause            a pod's network namespace: a new netns with loopback up; it
                                prints "ready" and lives until its stdin closes (the kubelet, or
                                this whole test process, went away), like the pause container.
    sandbox.py run SPEC.json    one container: join the pod's netns, a new mount and UTS
                                namespace, a root of its own, the volumes at their mountPaths,
                                then exec the command.

The root is an overlay whose lower layer is the host's `/` (our "image": the host's Python and
the project's venv) and whose upper layer is a tmpfs private to the container. Mount points for
volumes are created in that upper layer, so nothing on the host changes; with
readOnlyRootFilesystem the root is then remounted read-only, so only mounted volumes are
writable, exactly as in a real container. Mounts made here live only in the container's mount
namespace and vanish with it.

SPEC.json: {"netns": "/proc/<pid>/ns/net", "scratch": dir, "hostname": str,
            "mounts": [{"source", "target", "readOnly"}], "readOnlyRoot": bool,
            "workingDir": str, "command": [...], "user": int|null, "group": int|null,
            "groups": [int], "noNewPrivs": bool, "dropAllCaps": bool, "statusFd": int,
            "parentPid": int, "imageDirs": [str]}
The environment of this process is the container's environment. If anything fails before the
exec, a one-line reason is written to statusFd and the exit code is 128 (the runtime's
StartError); a successful exec closes statusFd (close-on-exec) with nothing written.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import struct
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1

_libc = ctypes.CDLL(None, use_errno=True)


class SandboxError(Exception):
    pass


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(), fstype.encode() if fstype else None,
                       ctypes.c_ulong(flags), data.encode() if data else None),
           f"mount {source or ''} on {target}")


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH14s", b"lo", 0, b""))
        flags = struct.unpack("16sH", ifr[:18])[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))


def pause() -> int:
    _check(_libc.unshare(CLONE_NEWNET), "unshare(net)")
    _loopback_up()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while sys.stdin.buffer.read(4096):
        pass
    return 0


def _inside(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _prepare(spec: dict) -> None:
    if spec.get("parentPid"):
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != spec["parentPid"]:
            raise SandboxError("the kubelet went away before the container started")
    if spec.get("netns"):
        fd = os.open(spec["netns"], os.O_RDONLY)
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns({spec['netns']})")
        os.close(fd)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare(mount, uts)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates to the host
    if spec.get("hostname"):
        socket.sethostname(spec["hostname"])

    scratch = spec["scratch"]
    _mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    upper, work, root = (os.path.join(scratch, d) for d in ("upper", "work", "root"))
    for d in (upper, work, root):
        os.mkdir(d)
    _mount("overlay", root, "overlay", 0, f"lowerdir=/,upperdir={upper},workdir={work}")
    for sub in ("/proc", "/sys", "/dev"):
        _mount(sub, _inside(root, sub), None, MS_BIND | MS_REC)
    if spec.get("user"):
        # The host keeps the interpreter under /root (mode 0700); let a non-root user through,
        # in this container's upper layer only.
        os.chmod(_inside(root, "/root"), 0o711)
    for m in sorted(spec.get("mounts") or [], key=lambda m: m["target"].count("/")):
        target = _inside(root, m["target"])
        if os.path.isdir(m["source"]):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.exists(target):
                open(target, "w").close()
        _mount(m["source"], target, None, MS_BIND | MS_REC)
        if m.get("readOnly"):
            _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    # The image's own directories stay visible under any volume mounted over a parent of them
    # (see ProcessKubelet.image_dirs), read-only as an image layer is.
    targets = [m["target"].rstrip("/") or "/" for m in spec.get("mounts") or []]
    for image_dir in spec.get("imageDirs") or []:
        if any(image_dir == t or image_dir.startswith(t.rstrip("/") + "/") for t in targets):
            target = _inside(root, image_dir)
            os.makedirs(target, exist_ok=True)
            _mount(image_dir, target, None, MS_BIND | MS_REC)
            _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    workdir = spec.get("workingDir") or "/"
    os.makedirs(_inside(root, workdir), exist_ok=True)
    if spec.get("readOnlyRoot"):
        _mount(None, root, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    os.chroot(root)
    os.chdir(workdir)

    if spec.get("noNewPrivs"):
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")
    if spec.get("dropAllCaps"):
        for cap in range(64):
            if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                break  # past the last capability this kernel knows
    if spec.get("group") is not None:
        os.setgroups([int(g) for g in spec.get("groups") or []])
        os.setgid(int(spec["group"]))
    if spec.get("user") is not None:
        os.setuid(int(spec["user"]))


def run(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    status_fd = int(spec["statusFd"])
    os.set_inheritable(status_fd, False)  # closed by a successful exec
    command = spec["command"]
    try:
        _prepare(spec)
        os.execvpe(command[0], command, dict(os.environ))
    except (OSError, SandboxError) as exc:
        if isinstance(exc, FileNotFoundError) and exc.filename in (None, command[0]):
            reason = f'exec: "{command[0]}": executable file not found in $PATH'
        else:
            reason = str(exc)
        os.write(status_fd, reason.encode()[:4000])
        return 128
    return 128  # not reached


def main(argv: list[str]) -> int:
    if argv[:1] == ["pause"]:
        return pause()
    if argv[:1] == ["run"] and len(argv) == 2:
        return run(argv[1])
    sys.stderr.write("usage: sandbox.py pause | run SPEC.json\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
