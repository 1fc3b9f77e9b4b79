"""A small fake Kubernetes API server for tests: real HTTP on 127.0.0.1, generic over
group/version/resource, and faithful in the behaviour ftops relies on.

Why not kmock: it ignores label selectors and sets no resourceVersion or uid, and our backend's
correctness *is* those things (idempotent create by name, 409 -> re-read, watch from a
resourceVersion, relist on 410 Gone). What this server does, as the real API server does:

* one global, monotonic resourceVersion; uid, creationTimestamp, generation on create;
* 404 NotFound, 409 AlreadyExists on create of an existing name, 409 Conflict on an update
  with a stale resourceVersion (and on delete preconditions), 400/422 on malformed input;
* namespaces must exist before namespaced objects are created in them (like the real API);
* list with label selectors (=, ==, !=, in, notin, exists, !exists) and simple field selectors;
* the status subresource (main-resource writes keep status; /status writes keep the rest);
* PATCH: merge, strategic merge (merge keys for named lists), JSON patch, and server-side apply
  (application/apply-patch+yaml, fieldManager required, field ownership, conflicts, force);
* DELETE with preconditions and ownerReference cascading (Orphan keeps dependents);
* watch streams (chunked JSON lines) with ADDED/MODIFIED/DELETED events from a
  resourceVersion, and an ERROR event with code 410 (Expired) once history is compacted;
* discovery (/version, /api, /apis, /api/v1, /apis/<g>/<v>) so `kubectl --server=` works;
* pod logs (/pods/<name>/log) from a kubelet's log source (container, tailLines, previous,
  follow), or from text the test sets in `logs`;
* graceful pod deletion: a pod bound to a node (spec.nodeName) and not yet terminal gets a
  deletionTimestamp and deletionGracePeriodSeconds and stays until its kubelet removes it, as
  the real API server does; an unbound or terminal pod, or gracePeriodSeconds=0, goes at once.
  Garbage collection deletes dependents the same way.

Lists ignore `limit` (everything fits in one page). Lists inside objects are atomic for
server-side apply field ownership (the real server merges some by key).
"""
from __future__ import annotations

import base64
import copy
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import yaml


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    status: bool = True
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def gr(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


@dataclass(frozen=True)
class LogResult:
    """What a kubelet's log source answers for GET /pods/<name>/log: the text so far, an error
    the real API server would give (400: container waiting, no previous instance, no container
    named), and for follow=true an iterator of later chunks that ends when the container does."""
    text: str = ""
    error: str | None = None
    follow: Callable[[], Any] | None = None


DEFAULT_RESOURCES = (
    Resource("", "v1", "Namespace", "namespaces", namespaced=False, short_names=("ns",)),
    Resource("", "v1", "ConfigMap", "configmaps", status=False, short_names=("cm",)),
    Resource("", "v1", "Secret", "secrets", status=False),
    Resource("", "v1", "ServiceAccount", "serviceaccounts", status=False, short_names=("sa",)),
    Resource("", "v1", "Service", "services", short_names=("svc",)),
    Resource("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", short_names=("pvc",)),
    Resource("", "v1", "Pod", "pods", short_names=("po",)),
    Resource("", "v1", "Event", "events", status=False, short_names=("ev",)),
    Resource("apps", "v1", "Deployment", "deployments", short_names=("deploy",)),
    Resource("apps", "v1", "ReplicaSet", "replicasets", short_names=("rs",)),
    Resource("batch", "v1", "Job", "jobs"),
    Resource("coordination.k8s.io", "v1", "Lease", "leases", status=False),
    Resource("kubeflow.org", "v1", "PyTorchJob", "pytorchjobs"),
    Resource("jobset.x-k8s.io", "v1alpha2", "JobSet", "jobsets"),
    Resource("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions",
             namespaced=False, short_names=("crd",)),
)

_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
                "reason": self.reason, "details": self.details, "code": self.code}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------- selectors

_REQ = re.compile(r"^\s*(!?)([A-Za-z0-9./_-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9._-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_selector(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def parse_label_selector(text: str) -> Callable[[dict], bool]:
    """A predicate over a labels dict; raises ApiError(400) on a malformed selector."""
    reqs = []
    for part in _split_selector(text or ""):
        m = _REQ.match(part)
        if not m:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        neg, key, op, value, setop, values = m.groups()
        if neg and (op or setop):
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        if neg:
            reqs.append(lambda l, k=key: k not in l)
        elif op in ("=", "=="):
            reqs.append(lambda l, k=key, v=value: l.get(k) == v)
        elif op == "!=":
            reqs.append(lambda l, k=key, v=value: l.get(k) != v)
        elif setop:
            vals = {v.strip() for v in values.split(",") if v.strip()}
            if setop == "in":
                reqs.append(lambda l, k=key, vs=vals: l.get(k) in vs)
            else:
                reqs.append(lambda l, k=key, vs=vals: l.get(k) not in vs)
        else:
            reqs.append(lambda l, k=key: k in l)
    return lambda labels: all(r(labels or {}) for r in reqs)


def parse_field_selector(text: str) -> Callable[[dict], bool]:
    reqs = []
    for part in [p for p in (text or "").split(",") if p.strip()]:
        m = re.match(r"^\s*([A-Za-z0-9._]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {part!r}")
        path, op, value = m.groups()

        def get(obj: dict, path: str = path) -> str:
            node: Any = obj
            for p in path.split("."):
                node = node.get(p) if isinstance(node, dict) else None
            return "" if node is None else str(node)

        reqs.append((lambda o, g=get, v=value: g(o) == v) if op != "!=" else (lambda o, g=get, v=value: g(o) != v))
    return lambda obj: all(r(obj) for r in reqs)


# ----------------------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


_MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
               "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name",
               "conditions": "type", "tolerations": "key"}


def strategic_merge_patch(target: Any, patch: Any, field: str = "") -> Any:
    """Strategic merge patch, as far as kubectl apply needs: named lists merge by key,
    `$patch: delete|replace`, `$deleteFromPrimitiveList/`, `$setElementOrder/` and `$retainKeys`."""
    if isinstance(patch, list):
        key = _MERGE_KEYS.get(field)
        if key and isinstance(target, list) and all(isinstance(i, dict) for i in patch + target):
            result = [copy.deepcopy(i) for i in target]
            for item in patch:
                directive = item.get("$patch")
                idx = next((n for n, cur in enumerate(result) if cur.get(key) == item.get(key)), None)
                if directive == "delete":
                    if idx is not None:
                        result.pop(idx)
                elif idx is None:
                    result.append(strategic_merge_patch({}, item))
                else:
                    result[idx] = strategic_merge_patch(result[idx], item)
            return result
        return [strategic_merge_patch(None, i) if isinstance(i, dict) else i for i in patch]
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: v for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if k in ("$patch", "$retainKeys") or k.startswith("$setElementOrder/"):
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            name = k.split("/", 1)[1]
            result[name] = [x for x in result.get(name, []) if x not in v]
            continue
        if v is None:
            result.pop(k, None)
        else:
            merged = strategic_merge_patch(result.get(k), v, k)
            if merged is None:
                result.pop(k, None)
            else:
                result[k] = merged
    return result


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")] if path else []


def json_patch(target: Any, ops: list) -> Any:
    """RFC 6902: add, remove, replace, test, copy, move."""
    doc = copy.deepcopy(target)

    def walk(parts: list[str]):
        node = doc
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        return node, parts[-1]

    try:
        for op in ops:
            kind, parts = op["op"], _pointer(op["path"])
            if kind == "test":
                node, last = walk(parts)
                cur = node[int(last)] if isinstance(node, list) else node[last]
                if cur != op["value"]:
                    raise ApiError(422, "Invalid", f"test failed at {op['path']}")
                continue
            if kind in ("copy", "move"):
                src_node, src_last = walk(_pointer(op["from"]))
                value = copy.deepcopy(src_node[int(src_last)] if isinstance(src_node, list) else src_node[src_last])
                if kind == "move":
                    if isinstance(src_node, list):
                        src_node.pop(int(src_last))
                    else:
                        del src_node[src_last]
                op = {"op": "add", "path": op["path"], "value": value}
                kind = "add"
            node, last = walk(parts)
            if kind == "remove":
                if isinstance(node, list):
                    node.pop(int(last))
                else:
                    del node[last]
            elif kind in ("add", "replace"):
                if isinstance(node, list):
                    if last == "-":
                        node.append(op["value"])
                    elif kind == "add":
                        node.insert(int(last), op["value"])
                    else:
                        node[int(last)] = op["value"]
                else:
                    if kind == "replace" and last not in node:
                        raise ApiError(422, "Invalid", f"replace of missing path {op['path']}")
                    node[last] = op["value"]
            else:
                raise ApiError(400, "BadRequest", f"unknown JSON patch op {kind!r}")
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise ApiError(422, "Invalid", f"JSON patch failed: {exc}") from None
    return doc


# ----------------------------------------------------------------------------- field ownership

_IGNORED_FIELDS = {("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace"),
                   ("metadata", "resourceVersion"), ("metadata", "uid"), ("metadata", "managedFields"),
                   ("metadata", "creationTimestamp"), ("metadata", "generation")}


def leaf_paths(obj: Any, prefix: tuple = ()) -> dict[tuple, Any]:
    """Leaves of an object: dict keys are descended, lists and scalars are leaves."""
    out: dict[tuple, Any] = {}
    if isinstance(obj, dict) and (obj or not prefix):
        for k, v in obj.items():
            out.update(leaf_paths(v, prefix + (k,)))
    else:
        if prefix not in _IGNORED_FIELDS:
            out[prefix] = obj
    return out


def _get_path(obj: Any, path: tuple) -> tuple[bool, Any]:
    node = obj
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return False, None
        node = node[p]
    return True, node


def _set_path(obj: dict, path: tuple, value: Any) -> None:
    node = obj
    for p in path[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[path[-1]] = copy.deepcopy(value)


def _del_path(obj: dict, path: tuple) -> None:
    node = obj
    parents = []
    for p in path[:-1]:
        if not isinstance(node, dict) or p not in node:
            return
        parents.append((node, p))
        node = node[p]
    if isinstance(node, dict):
        node.pop(path[-1], None)
    for parent, key in reversed(parents):  # prune maps the removal emptied
        if parent[key] == {}:
            del parent[key]
        else:
            break


def _fields_v1(paths: set[tuple]) -> dict:
    tree: dict = {}
    for path in sorted(paths):
        node = tree
        for p in path:
            node = node.setdefault(f"f:{p}", {})
    return tree


def _normalize(r: Resource, obj: dict) -> None:
    """What the real API server does to some kinds on every write: a Secret's stringData is
    merged into data (base64) and never stored."""
    if r.kind == "Secret" and isinstance(obj.get("stringData"), dict):
        data = dict(obj.get("data") or {})
        for k, v in obj.pop("stringData").items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        obj["data"] = data


# ----------------------------------------------------------------------------- server


class FakeKube:
    """The store and its HTTP front. Use as a context manager or call start()/stop()."""

    def __init__(self, resources=DEFAULT_RESOURCES, require_namespaces: bool = True, watch_max_seconds: float = 30) -> None:
        self.resources: dict[tuple[str, str, str], Resource] = {}
        for r in resources:
            self.register(r)
        self.require_namespaces = require_namespaces
        self.watch_max_seconds = watch_max_seconds
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._rv = 1
        self._objects: dict[tuple[str, str, str, str], dict] = {}  # (group, plural, namespace, name)
        self._owners: dict[tuple[str, str, str, str], dict[tuple, str]] = {}  # field path -> manager
        self._applied: dict[tuple[str, str, str, str], dict[str, set[tuple]]] = {}  # manager -> applied paths
        self._events: list[tuple[int, tuple, str, dict]] = []
        self._history_from = 1  # events after this resourceVersion are kept; a watch from older gets 410
        self._hooks: list[tuple[str, re.Pattern, Callable[[], None]]] = []
        self.logs: dict[tuple[str, str], str] = {}
        # A kubelet serves real container logs: (namespace, pod, query) -> LogResult; see _pod_log.
        self.log_source: Callable[[str, str, dict], "LogResult"] | None = None
        self.proxy_source: Callable[[str, str, int, str], tuple[int, str, bytes]] | None = None
        """What answers GET pods/<name>:<port>/proxy/<path>: (status, content type, body); the kubelet's."""
        self.requests: list[dict] = []
        self._stopping = False
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> "FakeKube":
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fakekube", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> "FakeKube":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def kubeconfig(self, namespace: str = "default") -> str:
        """A kubeconfig (YAML text) pointing at this server."""
        return yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        })

    # -- registry

    def register(self, resource: Resource) -> None:
        """Serve another group/version/resource (e.g. a CRD) from now on."""
        self.resources[(resource.group, resource.version, resource.plural)] = resource

    def resource_for(self, api_version: str, kind: str) -> Resource:
        group, _, version = api_version.rpartition("/")
        for r in self.resources.values():
            if r.group == group and r.version == version and r.kind == kind:
                return r
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({api_version} {kind})")

    # -- test controls

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def compact(self) -> int:
        """Forget watch history up to now: watches from an older resourceVersion get 410 Gone."""
        with self._lock:
            self._history_from = self._rv
            self._events.clear()
            return self._rv

    def wait_for_change(self, after: int, timeout: float) -> int:
        """Block until the store's resourceVersion passes `after` (any write) or `timeout`
        seconds pass; returns the current resourceVersion. In-process controllers use it as
        their watch: they wake on every write and resync level-triggered."""
        with self._changed:
            if self._rv <= after and not self._stopping:
                self._changed.wait(timeout)
            return self._rv

    def notify(self) -> None:
        """Wake every wait_for_change (a controller that is stopping)."""
        with self._changed:
            self._changed.notify_all()

    def before_next(self, method: str, path_regex: str, action: Callable[[], None]) -> None:
        """Run `action` once, just before the next request matching method and path is handled
        (to interleave a concurrent writer deterministically)."""
        with self._lock:
            self._hooks.append((method.upper(), re.compile(path_regex), action))

    def ensure_namespace(self, name: str) -> dict:
        try:
            return self.get("v1", "Namespace", None, name)
        except ApiError:
            return self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    # -- store operations (used by the HTTP handler and by tests' fake controllers)

    def _key(self, r: Resource, namespace: str | None, name: str) -> tuple[str, str, str, str]:
        return (r.group, r.plural, namespace or "" if r.namespaced else "", name)

    def _bump(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _emit(self, kind: str, key: tuple, obj: dict) -> None:
        self._events.append((int(obj["metadata"]["resourceVersion"]), key, kind, copy.deepcopy(obj)))
        if len(self._events) > 10_000:
            self._history_from = self._events[999][0]
            del self._events[:1000]
        self._changed.notify_all()

    def _not_found(self, r: Resource, name: str) -> ApiError:
        return ApiError(404, "NotFound", f'{r.gr} "{name}" not found', {"name": name, "group": r.group, "kind": r.plural})

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict:
        r = self.resource_for(api_version, kind)
        return self._get(r, namespace, name)

    def _get(self, r: Resource, namespace: str | None, name: str) -> dict:
        with self._lock:
            obj = self._objects.get(self._key(r, namespace, name))
            if obj is None:
                raise self._not_found(r, name)
            return self._out(r, self._key(r, namespace, name), obj)

    def _out(self, r: Resource, key: tuple, obj: dict) -> dict:
        out = copy.deepcopy(obj)
        owners = self._owners.get(key, {})
        managers: dict[tuple[str, str], set] = {}
        for path, manager in owners.items():
            managers.setdefault((manager, "Apply" if path in self._applied.get(key, {}).get(manager, set())
                                 else "Update"), set()).add(path)
        if managers:
            out["metadata"]["managedFields"] = [
                {"manager": m, "operation": op, "apiVersion": r.api_version, "fieldsType": "FieldsV1",
                 "fieldsV1": _fields_v1(paths), "time": out["metadata"].get("creationTimestamp")}
                for (m, op), paths in sorted(managers.items())
            ]
        return out

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str = "",
             field_selector: str = "") -> dict:
        return self._list(self.resource_for(api_version, kind), namespace, label_selector, field_selector)

    def _list(self, r: Resource, namespace: str | None, label_selector: str = "", field_selector: str = "") -> dict:
        labels_ok = parse_label_selector(label_selector)
        fields_ok = parse_field_selector(field_selector)
        with self._lock:
            items = [
                self._out(r, key, obj)
                for key, obj in sorted(self._objects.items())
                if key[0] == r.group and key[1] == r.plural and (not namespace or key[2] == namespace)
                and labels_ok(obj["metadata"].get("labels") or {}) and fields_ok(obj)
            ]
            return {"kind": f"{r.kind}List", "apiVersion": r.api_version,
                    "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    def create(self, obj: dict, namespace: str | None = None, manager: str = "test", dry_run: bool = False) -> dict:
        r = self.resource_for(obj.get("apiVersion", ""), obj.get("kind", ""))
        return self._create(r, obj, namespace if namespace is not None else obj.get("metadata", {}).get("namespace"),
                            manager, dry_run)

    def _create(self, r: Resource, body: Any, namespace: str | None, manager: str, dry_run: bool = False,
                applied: bool = False) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was not a JSON object")
        obj = copy.deepcopy(body)
        obj.setdefault("apiVersion", r.api_version)
        obj.setdefault("kind", r.kind)
        if obj["apiVersion"] != r.api_version or obj["kind"] != r.kind:
            raise ApiError(400, "BadRequest", f"the API version in the data ({obj['apiVersion']}) does not match the "
                           f"expected API version ({r.api_version}) or kind ({obj['kind']} != {r.kind})")
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name or not isinstance(name, str):
            raise ApiError(422, "Invalid", f"{r.kind} is invalid: metadata.name: Required value: name or generateName is required")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) or len(name) > 253:
            raise ApiError(422, "Invalid", f'{r.kind} "{name}" is invalid: metadata.name: Invalid value: "{name}"')
        if r.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
            namespace = namespace or meta.get("namespace")
            if not namespace:
                raise ApiError(400, "BadRequest", "a namespace is required for namespaced resources")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        with self._lock:
            if r.namespaced and self.require_namespaces and ("", "namespaces", "", namespace) not in self._objects:
                raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found', {"name": namespace, "kind": "namespaces"})
            key = self._key(r, namespace, name)
            if key in self._objects:
                raise ApiError(409, "AlreadyExists", f'{r.gr} "{name}" already exists', {"name": name, "group": r.group, "kind": r.plural})
            if meta.get("resourceVersion"):
                raise ApiError(400, "BadRequest", "resourceVersion should not be set on objects to be created")
            meta.pop("managedFields", None)
            _normalize(r, obj)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta["generation"] = 1
            if r.status and r.kind != "Namespace":
                obj["status"] = {}
            if r.kind == "Namespace":
                obj["status"] = {"phase": "Active"}
            if dry_run:
                meta["resourceVersion"] = str(self._rv)
                return obj
            meta["resourceVersion"] = self._bump()
            self._objects[key] = obj
            self._owners[key] = {p: manager for p in leaf_paths(body)}
            if applied:
                self._applied[key] = {manager: set(leaf_paths(body))}
            self._emit("ADDED", key, obj)
            return self._out(r, key, obj)

    def _store_update(self, r: Resource, key: tuple, old: dict, new: dict, manager: str, changed_paths: set | None,
                      subresource: str = "", dry_run: bool = False, ownership_changed: bool = False) -> dict:
        """Write `new` over `old` with the status-subresource and bookkeeping rules."""
        new = copy.deepcopy(new)
        if r.status:
            if subresource == "status":
                status = new.get("status")
                new = copy.deepcopy(old)
                if status is not None:
                    new["status"] = status
                else:
                    new.pop("status", None)
            else:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
        _normalize(r, new)
        meta = new.setdefault("metadata", {})
        for k in ("uid", "creationTimestamp", "namespace", "name"):
            if k in old["metadata"]:
                meta[k] = old["metadata"][k]
        meta.pop("managedFields", None)
        meta["generation"] = old["metadata"].get("generation", 1)
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old and not ownership_changed:
            return self._out(r, key, old)  # a no-op write does not bump the resourceVersion
        spec_changed = {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
            k: v for k, v in old.items() if k not in ("metadata", "status")}
        if spec_changed:
            meta["generation"] += 1
        if dry_run:
            return new
        meta["resourceVersion"] = self._bump()
        owners = self._owners.setdefault(key, {})
        paths = changed_paths if changed_paths is not None else {
            p for p, v in leaf_paths(new).items() if _get_path(old, p) != (True, v)}
        for p in paths:
            owners[p] = manager
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(r, key, new)
            return new
        self._objects[key] = new
        self._emit("MODIFIED", key, new)
        return self._out(r, key, new)

    def update(self, obj: dict, manager: str = "test", subresource: str = "") -> dict:
        r = self.resource_for(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        return self._update(r, meta.get("namespace"), meta["name"], obj, manager, subresource)

    def _update(self, r: Resource, namespace: str | None, name: str, body: Any, manager: str, subresource: str = "",
                dry_run: bool = False) -> dict:
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise ApiError(400, "BadRequest", "the body of the request was not a JSON object with metadata")
        if body["metadata"].get("name") not in (None, name):
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        with self._lock:
            key = self._key(r, namespace, name)
            old = self._objects.get(key)
            if old is None:
                raise self._not_found(r, name)
            rv = body["metadata"].get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {r.gr} "{name}": the object has been '
                               "modified; please apply your changes to the latest version and try again",
                               {"name": name, "group": r.group, "kind": r.plural})
            return self._store_update(r, key, old, body, manager, None, subresource, dry_run)

    def patch_status(self, api_version: str, kind: str, namespace: str | None, name: str, status: dict,
                     manager: str = "kubelet", strategic: bool = False) -> dict:
        """Merge-patch an object's status (what a controller or kubelet does). `strategic` merges
        `conditions` by type, as the kubelet's status patches do, so a condition another writer
        added (DisruptionTarget) survives."""
        r = self.resource_for(api_version, kind)
        ctype = "application/strategic-merge-patch+json" if strategic else "application/merge-patch+json"
        return self._patch(r, namespace, name, ctype, {"status": status}, manager, "status")

    def _patch(self, r: Resource, namespace: str | None, name: str, content_type: str, patch: Any, manager: str | None,
               subresource: str = "", force: bool = False, dry_run: bool = False) -> dict:
        ctype = content_type.split(";")[0].strip()
        with self._lock:
            key = self._key(r, namespace, name)
            old = self._objects.get(key)
            if ctype == "application/apply-patch+yaml":
                if not manager:
                    raise ApiError(400, "BadRequest", "PATCH requests of type application/apply-patch+yaml require a fieldManager")
                return self._apply(r, key, old, patch, manager, namespace, subresource, force, dry_run)
            if old is None:
                raise self._not_found(r, name)
            if ctype == "application/merge-patch+json":
                new = merge_patch(old, patch)
            elif ctype == "application/strategic-merge-patch+json":
                if r.group not in ("", "apps", "batch", "coordination.k8s.io"):
                    raise ApiError(415, "UnsupportedMediaType", "strategic merge patch is not supported for custom resources")
                new = strategic_merge_patch(old, patch)
            elif ctype == "application/json-patch+json":
                if not isinstance(patch, list):
                    raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
                new = json_patch(old, patch)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}")
            rv = (new.get("metadata") or {}).get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {r.gr} "{name}": the object has been modified')
            return self._store_update(r, key, old, new, manager or "unknown", None, subresource, dry_run)

    def _apply(self, r: Resource, key: tuple, old: dict | None, config: Any, manager: str, namespace: str | None,
               subresource: str, force: bool, dry_run: bool) -> dict:
        if not isinstance(config, dict):
            raise ApiError(400, "BadRequest", "an apply configuration must be an object")
        if config.get("apiVersion") != r.api_version or config.get("kind") != r.kind:
            raise ApiError(400, "BadRequest", f"apply configuration must set apiVersion {r.api_version} and kind {r.kind}")
        meta = config.get("metadata") or {}
        if meta.get("name") != key[3]:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        if old is None:
            if subresource:
                raise self._not_found(r, key[3])
            return self._create(r, config, namespace, manager, dry_run, applied=True)
        if meta.get("resourceVersion") and meta["resourceVersion"] != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {r.gr} "{key[3]}": the object has been modified')
        applied = leaf_paths(config)
        if subresource == "status":
            applied = {p: v for p, v in applied.items() if p[:1] == ("status",)}
        elif r.status:
            applied = {p: v for p, v in applied.items() if p[:1] != ("status",)}
        owners = self._owners.setdefault(key, {})
        conflicts = sorted(
            (owners[p], p) for p, v in applied.items()
            if p in owners and owners[p] != manager and _get_path(old, p) != (True, v)
        )
        if conflicts and not force:
            lines = "; ".join(f'conflict with "{m}": .{".".join(p)}' for m, p in conflicts)
            raise ApiError(409, "Conflict", f"Apply failed with {len(conflicts)} conflict{'s' if len(conflicts) > 1 else ''}: {lines}",
                           {"causes": [{"reason": "FieldManagerConflict", "message": f'conflict with "{m}"',
                                        "field": "." + ".".join(p)} for m, p in conflicts]})
        new = copy.deepcopy(old)
        before = self._applied.setdefault(key, {}).get(manager, set())
        # managedFields are part of the object: a new owner (or a changed field set) is a write.
        ownership_changed = before != set(applied) or any(owners.get(p) != manager for p in applied)
        for p in before - set(applied):
            if owners.get(p) == manager:
                _del_path(new, p)
                owners.pop(p, None)
        for p, v in applied.items():
            present, current = _get_path(new, p)
            if v == {} and present and isinstance(current, dict):
                continue  # an empty map claims the map, it does not clear others' keys
            _set_path(new, p, v)
        result = self._store_update(r, key, old, new, manager, set(applied), subresource if subresource else "", dry_run,
                                    ownership_changed)
        if not dry_run:
            for p in applied:
                owners[p] = manager
            self._applied[key][manager] = set(applied)
            for other, paths in self._applied[key].items():
                if other != manager:
                    paths -= set(applied)
        return self._out(r, key, self._objects.get(key, result)) if key in self._objects else result

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str, propagation: str = "Background",
               grace_period: int | None = None) -> dict:
        options: dict = {"propagationPolicy": propagation}
        if grace_period is not None:
            options["gracePeriodSeconds"] = grace_period
        return self._delete(self.resource_for(api_version, kind), namespace, name, options)

    def _delete(self, r: Resource, namespace: str | None, name: str, options: dict, dry_run: bool = False) -> dict:
        with self._lock:
            key = self._key(r, namespace, name)
            obj = self._objects.get(key)
            if obj is None:
                raise self._not_found(r, name)
            if not isinstance(options, dict):
                raise ApiError(400, "BadRequest", "DeleteOptions must be an object")
            pre = options.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != obj["metadata"]["uid"]:
                raise ApiError(409, "Conflict", f'Precondition failed: UID in precondition: {pre["uid"]}, UID in object meta: {obj["metadata"]["uid"]}')
            if pre.get("resourceVersion") and pre["resourceVersion"] != obj["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Precondition failed: ResourceVersion in precondition: {pre["resourceVersion"]}, '
                               f'ResourceVersion in object meta: {obj["metadata"]["resourceVersion"]}')
            if dry_run:
                return obj
            grace = self._pod_grace(r, obj, options)
            if grace is not None:
                return self._out(r, key, self._mark_terminating(r, key, obj, grace))
            if obj["metadata"].get("finalizers"):
                if not obj["metadata"].get("deletionTimestamp"):
                    new = copy.deepcopy(obj)
                    new["metadata"]["deletionTimestamp"] = _now()
                    new["metadata"]["resourceVersion"] = self._bump()
                    self._objects[key] = new
                    self._emit("MODIFIED", key, new)
                return self._out(r, key, self._objects[key])
            self._remove(r, key, obj)
            if (options or {}).get("propagationPolicy") != "Orphan":
                self._cascade(obj["metadata"]["uid"])
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": r.group, "kind": r.plural, "uid": obj["metadata"]["uid"]}}

    def _remove(self, r: Resource, key: tuple, obj: dict) -> None:
        self._objects.pop(key, None)
        self._owners.pop(key, None)
        self._applied.pop(key, None)
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = self._bump()
        self._emit("DELETED", key, gone)

    def _cascade(self, uid: str) -> None:
        for key, obj in list(self._objects.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in refs):
                r = next(x for x in self.resources.values() if x.group == key[0] and x.plural == key[1])
                grace = self._pod_grace(r, obj, {})
                if grace is not None:  # the garbage collector deletes a running pod gracefully
                    self._mark_terminating(r, key, obj, grace)
                    continue
                self._remove(r, key, obj)
                self._cascade(obj["metadata"]["uid"])

    @staticmethod
    def _pod_grace(r: Resource, obj: dict, options: dict) -> int | None:
        """The grace period a pod deletion waits for its kubelet, or None to delete at once: the
        real registry deletes an unbound pod (no nodeName) or a terminal one immediately."""
        if r.kind != "Pod" or not (obj.get("spec") or {}).get("nodeName"):
            return None
        if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return None
        grace = options.get("gracePeriodSeconds")
        if grace is None:
            grace = (obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
        try:
            grace = int(grace)
        except (TypeError, ValueError):
            raise ApiError(400, "BadRequest", f"gracePeriodSeconds must be an integer, not {grace!r}") from None
        if grace <= 0:
            return None
        if obj["metadata"].get("deletionTimestamp"):  # already terminating: a shorter grace wins
            return min(grace, int(obj["metadata"].get("deletionGracePeriodSeconds") or grace))
        return grace

    def _mark_terminating(self, r: Resource, key: tuple, obj: dict, grace: int) -> dict:
        if obj["metadata"].get("deletionTimestamp") and obj["metadata"].get("deletionGracePeriodSeconds") == grace:
            return obj
        new = copy.deepcopy(obj)
        when = datetime.now(timezone.utc).timestamp() + grace
        new["metadata"]["deletionTimestamp"] = datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        new["metadata"]["deletionGracePeriodSeconds"] = grace
        new["metadata"]["resourceVersion"] = self._bump()
        self._objects[key] = new
        self._emit("MODIFIED", key, new)
        return new

    # -- watch

    def _watch(self, r: Resource, namespace: str | None, query: dict, write: Callable[[dict], bool]) -> None:
        labels_ok = parse_label_selector(query.get("labelSelector", ""))
        fields_ok = parse_field_selector(query.get("fieldSelector", ""))
        timeout = min(float(query.get("timeoutSeconds") or self.watch_max_seconds), self.watch_max_seconds)
        deadline = time.monotonic() + timeout
        rv_param = query.get("resourceVersion", "")

        def matches(key: tuple, obj: dict) -> bool:
            return (key[0] == r.group and key[1] == r.plural and (not namespace or key[2] == namespace)
                    and labels_ok(obj["metadata"].get("labels") or {}) and fields_ok(obj))

        with self._lock:
            if rv_param in ("", "0"):
                initial = [("ADDED", self._out(r, k, o)) for k, o in sorted(self._objects.items()) if matches(k, o)]
                since = self._rv
            else:
                try:
                    since = int(rv_param)
                except ValueError:
                    raise ApiError(400, "BadRequest", f"invalid resourceVersion {rv_param!r}") from None
                initial = None if since < self._history_from else []
                floor = self._history_from
        if initial is None:
            write({"type": "ERROR", "object": ApiError(410, "Expired", f"too old resource version: {since} ({floor})").status()})
            return
        for kind, obj in initial:
            if not write({"type": kind, "object": obj}):
                return
        last = since
        while True:
            with self._changed:
                while not self._stopping:
                    pending = [e for e in self._events if e[0] > last]
                    if pending:
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    self._changed.wait(remaining)
                if self._stopping:
                    return
                floor = self._history_from
                if last < floor:
                    pending = None
            if pending is None:
                write({"type": "ERROR", "object": ApiError(410, "Expired", f"too old resource version: {last} ({floor})").status()})
                return
            for rv, key, kind, obj in pending:
                last = rv
                if matches(key, obj) and not write({"type": kind, "object": self._out(r, key, obj) if key in self._objects and kind != "DELETED" else obj}):
                    return

    # -- discovery

    def discovery(self, path: str) -> dict | None:
        if path == "/version":
            return {"major": "1", "minor": "30", "gitVersion": "v1.30.0-fakekube", "platform": "linux/amd64"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
        if path == "/apis":
            groups: dict[str, list[str]] = {}
            for r in self.resources.values():
                if r.group:
                    groups.setdefault(r.group, [])
                    if r.version not in groups[r.group]:
                        groups[r.group].append(r.version)
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                 "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
                for g, vs in sorted(groups.items())]}
        if path == "/openapi/v3":
            gvs = sorted({(r.group, r.version) for r in self.resources.values()})
            return {"paths": {("api/v1" if not g else f"apis/{g}/{v}"): {
                "serverRelativeURL": f"/openapi/v3/{'api/v1' if not g else f'apis/{g}/{v}'}?hash={self._rv_hash()}"}
                for g, v in gvs}}
        m3 = re.fullmatch(r"/openapi/v3/api/(v1)|/openapi/v3/apis/([^/]+)/([^/]+)", path)
        if m3:
            group, version = ("", "v1") if m3.group(1) else (m3.group(2), m3.group(3))
            return self._openapi_v3(group, version)
        m = re.fullmatch(r"/api/(v1)|/apis/([^/]+)/([^/]+)", path)
        if m:
            group, version = ("", "v1") if m.group(1) else (m.group(2), m.group(3))
            rs = [r for r in self.resources.values() if r.group == group and r.version == version]
            if not rs:
                return None
            resources = []
            for r in sorted(rs, key=lambda x: x.plural):
                resources.append({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
                                  "verbs": _VERBS, "shortNames": list(r.short_names)})
                if r.status:
                    resources.append({"name": f"{r.plural}/status", "singularName": "", "namespaced": r.namespaced,
                                      "kind": r.kind, "verbs": ["get", "patch", "update"]})
                if r.kind == "Pod":
                    resources.append({"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]})
                    resources.append({"name": "pods/proxy", "singularName": "", "namespaced": True, "kind": "Pod",
                                      "verbs": ["get"]})
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group else version,
                    "resources": resources}
        return None

    def _rv_hash(self) -> str:
        return f"{len(self.resources):08x}"

    def _openapi_v3(self, group: str, version: str) -> dict | None:
        """Just enough OpenAPI v3 for kubectl: each resource's PATCH operation, tagged with its
        group/version/kind and declaring the fieldValidation query parameter, so kubectl
        validates on the server (which this fake accepts) instead of downloading schemas."""
        rs = [r for r in self.resources.values() if r.group == group and r.version == version]
        if not rs:
            return None
        paths = {}
        for r in rs:
            base = "/api/v1" if not group else f"/apis/{group}/{version}"
            item = f"{base}/namespaces/{{namespace}}/{r.plural}/{{name}}" if r.namespaced else f"{base}/{r.plural}/{{name}}"
            gvk = {"group": group, "version": version, "kind": r.kind}
            paths[item] = {
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                               {"name": "fieldManager", "in": "query", "schema": {"type": "string"}}],
                "patch": {"operationId": f"patch{r.kind}", "x-kubernetes-group-version-kind": gvk,
                          "x-kubernetes-action": "patch", "responses": {"200": {"description": "OK"}}},
                "get": {"operationId": f"read{r.kind}", "x-kubernetes-group-version-kind": gvk,
                        "x-kubernetes-action": "get", "responses": {"200": {"description": "OK"}}},
            }
        return {"openapi": "3.0.0", "info": {"title": "fakekube", "version": "v1.30.0"}, "paths": paths,
                "components": {"schemas": {}}}

    def _register_crd(self, crd: dict) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        for v in spec.get("versions") or []:
            if v.get("served", True):
                self.register(Resource(spec.get("group", ""), v["name"], names.get("kind", ""), names.get("plural", ""),
                                       namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                                       status="status" in (v.get("subresources") or {}),
                                       short_names=tuple(names.get("shortNames") or ())))


# ----------------------------------------------------------------------------- server-side printing


def _age(created: str | None) -> str:
    if not created:
        return "<unknown>"
    secs = max(0, int(time.time() - datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size * 2:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def pod_status_text(pod: dict) -> str:
    """The STATUS column of `kubectl get pods`, computed as the API server's pod printer does."""
    st = pod.get("status") or {}
    reason = st.get("reason") or st.get("phase") or "Pending"
    inits = st.get("initContainerStatuses") or []
    n_init = len((pod.get("spec") or {}).get("initContainers") or [])
    for i, cs in enumerate(inits):
        state = cs.get("state") or {}
        term, wait = state.get("terminated"), state.get("waiting")
        if term and term.get("exitCode") == 0:
            continue
        if term:
            reason = "Init:" + (term.get("reason") or f"ExitCode:{term.get('exitCode')}")
        elif wait and wait.get("reason") not in (None, "", "PodInitializing"):
            reason = "Init:" + wait["reason"]
        else:
            reason = f"Init:{i}/{n_init}"
        return reason
    running = False
    for cs in reversed(st.get("containerStatuses") or []):
        state = cs.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated"):
            t = state["terminated"]
            reason = t.get("reason") or (f"Signal:{t['signal']}" if t.get("signal") else f"ExitCode:{t.get('exitCode')}")
        elif state.get("running") and cs.get("ready"):
            running = True
    if reason == "Completed" and running:
        reason = "Running"
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        reason = "Terminating"
    return reason


def as_table(r: Resource, items: list[dict], rv: str) -> dict:
    """A meta.k8s.io/v1 Table, which `kubectl get` asks for (as=Table) and prints as is."""
    def col(name: str, type_: str = "string", fmt: str = "") -> dict:
        return {"name": name, "type": type_, "format": fmt, "description": name, "priority": 0}

    if r.kind == "Pod":
        columns = [col("Name", fmt="name"), col("Ready"), col("Status"), col("Restarts", "string"), col("Age")]

        def cells(o: dict) -> list:
            css = (o.get("status") or {}).get("containerStatuses") or []
            ready = sum(1 for c in css if c.get("ready"))
            total = len((o.get("spec") or {}).get("containers") or [])
            restarts = sum(int(c.get("restartCount", 0)) for c in css)
            return [o["metadata"]["name"], f"{ready}/{total}", pod_status_text(o), str(restarts), _age(o["metadata"].get("creationTimestamp"))]
    elif r.kind == "Job":
        columns = [col("Name", fmt="name"), col("Status"), col("Completions"), col("Age")]

        def cells(o: dict) -> list:
            st = o.get("status") or {}
            conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
            status = ("Complete" if conds.get("Complete") == "True" else "Failed" if conds.get("Failed") == "True"
                      else "Suspended" if conds.get("Suspended") == "True" else "Running")
            return [o["metadata"]["name"], status, f"{st.get('succeeded', 0)}/{(o.get('spec') or {}).get('completions', 1)}",
                    _age(o["metadata"].get("creationTimestamp"))]
    elif r.kind == "Deployment":
        columns = [col("Name", fmt="name"), col("Ready"), col("Up-to-date", "integer"), col("Available", "integer"), col("Age")]

        def cells(o: dict) -> list:
            st = o.get("status") or {}
            return [o["metadata"]["name"], f"{st.get('readyReplicas', 0)}/{(o.get('spec') or {}).get('replicas', 1)}",
                    st.get("updatedReplicas", 0), st.get("availableReplicas", 0), _age(o["metadata"].get("creationTimestamp"))]
    else:
        columns = [col("Name", fmt="name"), col("Age")]

        def cells(o: dict) -> list:
            return [o["metadata"]["name"], _age(o["metadata"].get("creationTimestamp"))]

    rows = [{"cells": cells(o), "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                           "metadata": {k: v for k, v in o["metadata"].items() if k != "managedFields"}}}
            for o in items]
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
            "columnDefinitions": columns, "rows": rows}


# ----------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKube
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, code: int, payload: Any, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        fake = self.fake
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = self._body()
        ctype = self.headers.get("Content-Type", "")
        fake.requests.append({"method": method, "path": url.path, "query": query, "contentType": ctype,
                              "userAgent": self.headers.get("User-Agent", "")})
        with fake._lock:
            hooks = [h for h in fake._hooks if h[0] == method and h[1].search(url.path)]
            for h in hooks[:1]:
                fake._hooks.remove(h)
        for _, _, action in hooks[:1]:
            action()
        try:
            if method == "GET" and url.path == "/openapi/v2":
                # An empty OpenAPI v2 protobuf Document (zero bytes is a valid empty message):
                # kubectl's client-side schema check then knows no kinds and defers to us.
                return self._send(200, b"", "application/octet-stream")
            if method == "GET":
                doc = fake.discovery(url.path.rstrip("/") or "/")
                if doc is not None:
                    return self._send(200, doc)
            self._resource_request(method, url.path, query, body, ctype)
        except ApiError as err:
            self._send(err.code, err.status())
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _parse(self, path: str):
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        r = self.fake.resources.get((group, version, rest[0]))
        if r is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        if namespace is not None and not r.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        if sub and not (sub == "status" and r.status) and not (sub in ("log", "proxy") and r.kind == "Pod"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return r, namespace, name, sub

    def _decode(self, body: bytes, ctype: str) -> Any:
        try:
            if "yaml" in ctype:
                return yaml.safe_load(body.decode() or "null")
            return json.loads(body.decode() or "null")
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError(400, "BadRequest", f"the body could not be decoded: {exc}") from None

    def _resource_request(self, method: str, path: str, query: dict, body: bytes, ctype: str) -> None:
        fake = self.fake
        r, namespace, name, sub = self._parse(path)
        manager = query.get("fieldManager") or self.headers.get("User-Agent", "unknown").split("/")[0]
        dry_run = query.get("dryRun") == "All"
        if method == "GET" and name is None:
            if query.get("watch") in ("1", "true", "True"):
                return self._stream_watch(r, namespace, query)
            listed = fake._list(r, namespace, query.get("labelSelector", ""), query.get("fieldSelector", ""))
            if "as=Table" in self.headers.get("Accept", ""):
                return self._send(200, as_table(r, listed["items"], listed["metadata"]["resourceVersion"]))
            return self._send(200, listed)
        if method == "GET" and sub == "log":
            return self._pod_log(namespace or "", name, query)
        if method == "GET" and sub == "proxy":
            return self._pod_proxy(namespace or "", name, path, query)
        if method == "GET":
            obj = fake._get(r, namespace, name)
            if not sub and "as=Table" in self.headers.get("Accept", ""):
                return self._send(200, as_table(r, [obj], obj["metadata"]["resourceVersion"]))
            return self._send(200, obj)
        if method == "POST" and name is None:
            obj = fake._create(r, self._decode(body, ctype), namespace, manager, dry_run)
            if r.kind == "CustomResourceDefinition" and not dry_run:
                fake._register_crd(obj)
            return self._send(201, obj)
        if method == "PUT" and name:
            return self._send(200, fake._update(r, namespace, name, self._decode(body, ctype), manager, sub, dry_run))
        if method == "PATCH" and name:
            patch = self._decode(body, ctype if "apply-patch" in ctype else "application/json")
            existed = True
            with fake._lock:
                existed = fake._key(r, namespace, name) in fake._objects
            obj = fake._patch(r, namespace, name, ctype, patch, query.get("fieldManager") or (
                None if "apply-patch" in ctype else manager), sub, query.get("force") in ("true", "1"), dry_run)
            return self._send(200 if existed else 201, obj)
        if method == "DELETE" and name:
            options = self._decode(body, "application/json") if body else {}
            for param in ("propagationPolicy", "gracePeriodSeconds"):
                if param in query:
                    options = {**(options or {}), param: query[param]}
            return self._send(200, fake._delete(r, namespace, name, options or {}, dry_run))
        if method == "DELETE":
            selected = fake._list(r, namespace, query.get("labelSelector", ""), query.get("fieldSelector", ""))
            for item in selected["items"]:
                fake._delete(r, item["metadata"].get("namespace"), item["metadata"]["name"], {})
            return self._send(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {path}")

    def _pod_proxy(self, namespace: str, target: str, path: str, query: dict) -> None:
        """GET /api/v1/namespaces/<ns>/pods/[http:]<pod>[:<port>]/proxy/<path>: the API server's
        proxy to a pod's port (what a controller outside the pod network uses to read a pod's
        /metrics), through the kubelet's proxy source; 503 when the pod does not answer."""
        fake = self.fake
        parts = target.split(":")
        if parts[0] in ("http", "https"):
            parts = parts[1:]
        name, port = parts[0], (parts[1] if len(parts) > 1 else "")
        pod = fake._get(fake.resource_for("v1", "Pod"), namespace, name)
        if not port:
            ports = [p["containerPort"] for c in (pod.get("spec") or {}).get("containers") or [] for p in c.get("ports") or []]
            port = str(ports[0]) if ports else "80"
        if fake.proxy_source is None:
            raise ApiError(503, "ServiceUnavailable", f"no kubelet serves pod {name}")
        rest = path.split("/proxy", 1)[1] or "/"
        from urllib.parse import urlencode

        status, ctype, data = fake.proxy_source(namespace, name, int(port), rest + ("?" + urlencode(query) if query else ""))
        return self._send(status, data, ctype)

    def _pod_log(self, namespace: str, name: str, query: dict) -> None:
        fake = self.fake
        pod = fake._get(fake.resource_for("v1", "Pod"), namespace, name)
        if fake.log_source is None or (namespace, name) in fake.logs:
            return self._send(200, fake.logs.get((namespace, name), "").encode(), "text/plain")
        result = fake.log_source(namespace, name, query)
        if result.error is not None:
            raise ApiError(400, "BadRequest", result.error)
        if query.get("follow") not in ("true", "1") or result.follow is None:
            return self._send(200, result.text.encode(), "text/plain")
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in [result.text.encode(), *result.follow()]:
                if chunk:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass
        self.close_connection = True
        del pod

    def _stream_watch(self, r: Resource, namespace: str | None, query: dict) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def write(event: dict) -> bool:
            data = (json.dumps(event) + "\n").encode()
            try:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                return True
            except (BrokenPipeError, ConnectionResetError, OSError):
                return False

        try:
            self.fake._watch(r, namespace, query, write)
        except ApiError as err:
            write({"type": "ERROR", "object": err.status()})
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass
        self.close_connection = True
