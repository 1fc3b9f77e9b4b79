"""The api backend: a run of `method.type: api` is a managed fine-tuning job at a provider
(OpenAI's fine-tuning API, or any compatible one), driven through the official openai SDK.

    submit   render the prepared train and test splits as the provider's chat JSONL, upload
             each (`files.create(purpose="fine-tune")`) unless it is there already, create the
             job (`fine_tuning.jobs.create`) unless it exists already
    status   the job's state; once it succeeded, the run's manifest is written to the artifact
             store (job, events, checkpoints, metrics, then manifest.json last)
    cancel   `fine_tuning.jobs.cancel` (prune calls it)
    logs     the job's events (`list_events`)

Idempotent by run id, with the provider as the source of truth. The job carries the run id in
its `metadata` (`ftops-run-id`) and its model `suffix`; the uploads carry it in their file names
with the sha256 of their bytes (`ftops-<spec>-<run id>-train-<sha>.jsonl`). So a controller
killed at any point, with or without its own files, finds the job again by listing the
provider's jobs (paginated, filtered by that metadata and checked here too) and the files by
listing them, and never creates a second job or uploads a file twice. The small record kept
under `<root>/<run id>.json` (written before the first call to the provider) only says which
runs are this backend's and saves those lookups.

Failures: a provider's 4xx about the request (a bad file, an unknown base model) is a
PermanentError with the provider's own message; 429 (with its Retry-After), 5xx, timeouts and
connection errors are TemporaryErrors, retried by the controller's backoff: the SDK's own
retries are off, so exactly one policy, on the controller's clock, decides when to call again.
A refused API key (401/403) is temporary too: the key is the operator's to fix, not the spec's.
A job that fails at the provider is FAILED with reason ProviderFailed and the provider's error.

The run's "artifacts" are what the provider gives back: the job (its resolved hyper-parameters,
trained tokens, the fine-tuned model's id), its events, checkpoints and metrics. The model itself
stays at the provider; `manifest.json`'s `provider` block names it (`fineTunedModel`), and that is
what evaluation and serving route to.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from controller.backends.logs import tail_lines
from controller.catalog import ApiProvider, OperatorConfig, api_method_problems
from controller.clock import SYSTEM_CLOCK, Clock, iso
from controller.errors import FtopsError, PermanentError, TemporaryError
from controller.fsutil import read_json, write_json_atomic
from controller.seams import ArtifactStore, JsonObject, Phase, Run, RunNotFound, RunReason, RunState
from controller.spec.method import ApiMethod

if TYPE_CHECKING:
    import openai
    from openai.types.fine_tuning import FineTuningJob

RUN_ID_KEY = "ftops-run-id"
SPEC_KEY = "ftops-spec"
TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0
PAGE = 100
"""Items per page when listing jobs and files (the API's maximum)."""
PROVIDER_PHASES = {"validating_files": Phase.PENDING, "queued": Phase.PENDING, "running": Phase.RUNNING,
                   "succeeded": Phase.SUCCEEDED, "failed": Phase.FAILED, "cancelled": Phase.FAILED}
LINE_KEYS = ("messages", "tools", "parallel_tool_calls")
"""What one line of the provider's training file holds; the prepared split's own keys (sources,
metadata) stay with ftops."""


@dataclass
class ApiRun:
    """What this backend remembers of one run (the provider remains the source of truth)."""

    run_id: str
    spec: str
    provider: str
    model: str
    run_uri: str
    data_md5: str
    train: str
    test: str
    method: JsonObject
    credentials: JsonObject | None = None
    files: dict[str, str] = field(default_factory=dict)
    """'training' / 'validation' -> the provider's file id."""
    job_id: str | None = None
    cancelled: bool = False
    submitted_at: str | None = None


@dataclass(frozen=True)
class Upload:
    role: str
    filename: str
    content: bytes
    sha256: str


class ApiFineTuneBackend:
    """The Backend seam for `method.type: api`. `clients` builds the SDK client for a provider
    and API key (tests may wrap it); the store receives each finished run's manifest."""

    name = "api"

    def __init__(self, root: str | Path, store: ArtifactStore, operator: OperatorConfig, *,
                 env: Mapping[str, str] | None = None, clock: Clock = SYSTEM_CLOCK,
                 clients: Callable[[ApiProvider, str], "openai.OpenAI"] | None = None) -> None:
        import os

        self.root = Path(root)
        self.store = store
        self.operator = operator
        self.env = os.environ if env is None else env
        self.clock = clock
        self._make_client = clients or _client
        self._clients: dict[tuple[str, str], "openai.OpenAI"] = {}

    # ------------------------------------------------------------------ the seam
    def owns(self, run_id: str) -> bool:
        """Whether `run_id` is a run of this backend (it was submitted here)."""
        return self._path(run_id).is_file()

    def submit(self, run: Run) -> RunState:
        method = run.finetune.spec.method
        if not isinstance(method, ApiMethod):
            raise PermanentError(f"run {run.run_id}: method {method.type} is not trained by the api backend")
        problems = api_method_problems(run.finetune, self.operator)
        if problems:
            raise PermanentError("; ".join(f"{where}: {what}" for where, what in problems))
        record = self._load(run.run_id) or self._intent(run, method)
        if record.cancelled:
            return self.status(run.run_id)
        client = self._client_for(record)
        job = self._find_job(client, record)
        if job is None:
            uploads = [self._render(record, "training", Path(record.train)),
                       self._render(record, "validation", Path(record.test))]
            for upload in uploads:
                record.files[upload.role] = self._ensure_file(client, record, upload)
                self._save(record)
            job = self._create_job(client, record, method)
        record.job_id = job.id
        self._save(record)
        return self._state(record, job)

    def status(self, run_id: str) -> RunState:
        record = self._known(run_id)
        client = self._client_for(record)
        job = self._find_job(client, record)
        if job is None:
            if record.cancelled:
                return RunState(run_id, Phase.FAILED, RunReason.CANCELLED, "cancelled by ftops before the job was created")
            raise RunNotFound(f"run {run_id}: no fine-tuning job at {record.provider} carries it yet")
        if record.job_id != job.id:
            record.job_id = job.id
            self._save(record)
        if job.status == "succeeded":
            self._finish(client, record, job)
        return self._state(record, job)

    def cancel(self, run_id: str) -> RunState:
        record = self._known(run_id)
        record.cancelled = True
        self._save(record)
        client = self._client_for(record)
        job = self._find_job(client, record)
        if job is not None and PROVIDER_PHASES[job.status] not in (Phase.SUCCEEDED, Phase.FAILED):
            job_id = job.id
            self._call(record, f"cancel job {job_id}", lambda: client.fine_tuning.jobs.cancel(job_id))
        return self.status(run_id)

    def logs(self, run_id: str, tail: int | None = None) -> str:
        record = self._known(run_id)
        client = self._client_for(record)
        job = self._find_job(client, record)
        if job is None:
            return ""
        lines = [f"{iso(float(str(e['createdAt'])))} {e['level']} {e['message']}" for e in self._events(client, record, job.id)]
        return tail_lines("".join(line + "\n" for line in lines), tail)

    # ------------------------------------------------------------------ the run's record
    def _path(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise PermanentError(f"invalid run id {run_id!r}")
        return self.root / f"{run_id}.json"

    def _load(self, run_id: str) -> ApiRun | None:
        data = read_json(self._path(run_id))
        return ApiRun(**data) if isinstance(data, dict) else None

    def _known(self, run_id: str) -> ApiRun:
        record = self._load(run_id)
        if record is None:
            raise RunNotFound(f"run {run_id}: not known to the api backend under {self.root}")
        return record

    def _save(self, record: ApiRun) -> None:
        write_json_atomic(self._path(record.run_id), asdict(record))

    def _intent(self, run: Run, method: ApiMethod) -> ApiRun:
        """Written before the first call to the provider, so the run is known as this backend's
        whatever happens next."""
        cfg = run.config
        record = ApiRun(
            run_id=run.run_id, spec=run.spec_name, provider=method.provider, model=method.model,
            run_uri=self.store.run_uri(run.spec_name, run.run_id), data_md5=cfg.data.md5, train=cfg.data.train,
            test=cfg.data.test, method=method.model_dump(mode="json", by_alias=True, exclude={"credentials"}),
            credentials=method.credentials.model_dump(mode="json") if method.credentials else None,
            submitted_at=iso(self.clock.time()))
        self._save(record)
        return record

    # ------------------------------------------------------------------ the provider
    def _provider(self, record: ApiRun) -> ApiProvider:
        provider = self.operator.providers.get(record.provider)
        if provider is None:
            known = ", ".join(sorted(self.operator.providers)) or "none"
            raise PermanentError(f"spec.method.provider: '{record.provider}' is not a provider the operator configured. "
                                 f"Configured: {known}")
        return provider

    def _key_env(self, record: ApiRun) -> tuple[str, str, str]:
        """(variable, Secret name, key) of the run's API key: the spec's secretRef, else the operator's."""
        from controller.spec.base import secret_env_name

        provider = self._provider(record)
        ref = record.credentials
        name, key = (str(ref["name"]), str(ref["key"])) if ref else (provider.credentials.name, provider.credentials.key)
        return secret_env_name(name, key), name, key

    def _client_for(self, record: ApiRun) -> "openai.OpenAI":
        provider = self._provider(record)
        var, name, key = self._key_env(record)
        api_key = self.env.get(var, "")
        if not api_key:
            where = "spec.method.credentials" if record.credentials else \
                f"operator config providers.{record.provider}.credentials"
            raise TemporaryError(f"{where}: the API key for {record.provider} is not in the controller's environment: "
                                 f"set {var} (from Secret {name}, key {key}); the run waits until it is there")
        cached = self._clients.get((record.provider, api_key))
        if cached is None:
            cached = self._clients[(record.provider, api_key)] = self._make_client(provider, api_key)
        return cached

    def _call(self, record: ApiRun, doing: str, call: Callable[[], Any]) -> Any:
        """One request, its failures in the controller's two classes (module docstring)."""
        import openai

        try:
            return call()
        except openai.APIStatusError as exc:
            raise provider_error(record.provider, doing, exc) from None
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise TemporaryError(f"provider {record.provider}: {doing}: {type(exc).__name__}: {exc}; retrying") from None

    def _find_job(self, client: "openai.OpenAI", record: ApiRun) -> "FineTuningJob | None":
        """The run's job: by its id when known, else the newest job whose metadata carries the
        run id (every page of the provider's list: a provider that ignores the filter is still
        answered right, only slower)."""
        if record.job_id is not None:
            job: FineTuningJob = self._call(record, f"read job {record.job_id}",
                                            lambda: client.fine_tuning.jobs.retrieve(record.job_id or ""))
            return job
        def search() -> "FineTuningJob | None":
            for job in client.fine_tuning.jobs.list(limit=PAGE, metadata={RUN_ID_KEY: record.run_id}):
                if (job.metadata or {}).get(RUN_ID_KEY) == record.run_id:
                    return job
            return None

        found: FineTuningJob | None = self._call(record, "list fine-tuning jobs", search)
        return found

    def _render(self, record: ApiRun, role: str, source: Path) -> Upload:
        """The prepared split as the provider's training file: one `{"messages": [...]}` per line."""
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise PermanentError(f"run {record.run_id}: the prepared {role} split {source} is missing; "
                                 "the data step prepares it") from None
        out = []
        for line in lines:
            if line.strip():
                example = json.loads(line)
                out.append(json.dumps({k: example[k] for k in LINE_KEYS if k in example}, ensure_ascii=False))
        content = ("\n".join(out) + "\n").encode("utf-8")
        sha = hashlib.sha256(content).hexdigest()
        return Upload(role, f"ftops-{record.spec}-{record.run_id}-{role}-{sha[:16]}.jsonl", content, sha)

    def _ensure_file(self, client: "openai.OpenAI", record: ApiRun, upload: Upload) -> str:
        """The file's id at the provider: the one already uploaded under this name (the name
        carries the run id and the content's sha256), or a new upload."""
        known = record.files.get(upload.role)
        if known is not None:
            return known

        def search() -> str | None:
            for stored in client.files.list(purpose="fine-tune", limit=PAGE):
                if stored.filename == upload.filename and stored.bytes == len(upload.content):
                    return stored.id
            return None

        found: str | None = self._call(record, "list files", search)
        if found is not None:
            return found
        created = self._call(record, f"upload the {upload.role} file {upload.filename}",
                             lambda: client.files.create(file=(upload.filename, upload.content), purpose="fine-tune"))
        return str(created.id)

    def _create_job(self, client: "openai.OpenAI", record: ApiRun, method: ApiMethod) -> "FineTuningJob":
        h = method.hyperparameters
        from openai.types.fine_tuning.job_create_params import Method
        from openai.types.fine_tuning.supervised_hyperparameters_param import SupervisedHyperparametersParam

        hyper: SupervisedHyperparametersParam = {
            "n_epochs": h.epochs, "learning_rate_multiplier": h.learning_rate_multiplier, "batch_size": h.batch_size}
        supervised: Method = {"type": "supervised", "supervised": {"hyperparameters": hyper}}
        job: FineTuningJob = self._call(record, f"create the fine-tuning job for {method.model}", lambda: (
            client.fine_tuning.jobs.create(
                model=method.model, training_file=record.files["training"],
                validation_file=record.files.get("validation"), suffix=record.run_id, seed=method.seed,
                metadata={RUN_ID_KEY: record.run_id, SPEC_KEY: record.spec[:512]},
                method=supervised)))
        return job

    def _events(self, client: "openai.OpenAI", record: ApiRun, job_id: str) -> list[JsonObject]:
        """Every event of the job, oldest first (the API lists them newest first)."""
        def read() -> list[JsonObject]:
            return [{"id": e.id, "createdAt": e.created_at, "level": e.level, "message": e.message,
                     "type": e.type, "data": _json(e.data)}
                    for e in client.fine_tuning.jobs.list_events(job_id, limit=PAGE)]

        events: list[JsonObject] = self._call(record, f"read the events of job {job_id}", read)
        return list(reversed(events))

    def _checkpoints(self, client: "openai.OpenAI", record: ApiRun, job_id: str) -> list[JsonObject]:
        def read() -> list[JsonObject]:
            return [{"id": c.id, "createdAt": c.created_at, "stepNumber": c.step_number,
                     "model": c.fine_tuned_model_checkpoint, "metrics": c.metrics.model_dump(exclude_none=True)}
                    for c in client.fine_tuning.jobs.checkpoints.list(job_id, limit=PAGE)]

        checkpoints: list[JsonObject] = self._call(record, f"read the checkpoints of job {job_id}", read)
        return sorted(checkpoints, key=lambda c: int(str(c["stepNumber"])))

    # ------------------------------------------------------------------ state and artifacts
    def _state(self, record: ApiRun, job: "FineTuningJob") -> RunState:
        phase = PROVIDER_PHASES[job.status]
        handles: JsonObject = {"backend": self.name, "provider": record.provider, "job": job.id,
                               "trainingFile": record.files.get("training") or job.training_file,
                               "validationFile": record.files.get("validation") or job.validation_file}
        if job.fine_tuned_model:
            handles["fineTunedModel"] = job.fine_tuned_model
        started = iso(job.created_at)
        finished = iso(job.finished_at) if job.finished_at else None
        where = f"{record.provider} job {job.id}"
        if job.status == "succeeded":
            return RunState(record.run_id, phase, RunReason.COMPLETE, f"{where}: {job.fine_tuned_model}", None, started,
                            finished, handles)
        if job.status == "cancelled":
            return RunState(record.run_id, phase, RunReason.CANCELLED, f"{where} was cancelled", None, started, finished,
                            handles)
        if job.status == "failed":
            err = job.error
            why = f"{err.message} (code {err.code}{', param ' + err.param if err.param else ''})" if err else "no reason given"
            return RunState(record.run_id, phase, RunReason.PROVIDER_FAILED, f"{where} failed: {why}", None, started,
                            finished, handles)
        reason = RunReason.RUNNING if phase is Phase.RUNNING else RunReason.STARTING
        return RunState(record.run_id, phase, reason, f"{where} {job.status}", None, started, None, handles)

    def _finish(self, client: "openai.OpenAI", record: ApiRun, job: "FineTuningJob") -> None:
        """The run's artifacts in the store: what the provider says of the job, manifest last."""
        if self.store.manifest(record.run_uri) is not None:
            return
        events = self._events(client, record, job.id)
        checkpoints = self._checkpoints(client, record, job.id)
        metrics = [{"step": int(float(str(d.get("step", 0)))), "loss": d.get("train_loss"), "validLoss": d.get("valid_loss")}
                   for e in events if e.get("type") == "metrics" and isinstance(d := e.get("data"), dict)]
        files = {
            "provider/job.json": _dumps(job.model_dump(mode="json")),
            "provider/events.jsonl": "".join(json.dumps(e, sort_keys=True) + "\n" for e in events).encode(),
            "provider/checkpoints.json": _dumps(checkpoints),
            "metrics.jsonl": "".join(json.dumps(m, sort_keys=True) + "\n" for m in metrics).encode(),
        }
        for rel, data in files.items():
            self.store.put(self.store.join(record.run_uri, rel), data)
        provider = self._provider(record)
        block: JsonObject = {
            "name": record.provider, "baseUrl": provider.base_url, "job": job.id, "baseModel": job.model,
            "fineTunedModel": job.fine_tuned_model, "trainingFile": record.files.get("training") or job.training_file,
            "validationFile": record.files.get("validation") or job.validation_file, "trainedTokens": job.trained_tokens,
            "hyperparameters": job.hyperparameters.model_dump(mode="json"), "resultFiles": list(job.result_files),
            "seed": job.seed, "finishedAt": iso(job.finished_at) if job.finished_at else None,
            "apiKeyEnv": self._key_env(record)[0]}  # the variable's name, never the key
        manifest = {
            "runId": record.run_id,
            "files": {rel: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for rel, data in files.items()},
            "provenance": {"runId": record.run_id, "specName": record.spec, "dataMd5": record.data_md5,
                           "baseModel": {"uri": f"api://{record.provider}/{record.model}", "revision": None},
                           "method": record.method, "trainSha256": _sha256_file(record.train),
                           "testSha256": _sha256_file(record.test), "backend": self.name},
            "provider": block,
            "model": {"kind": "api", "id": job.fine_tuned_model},
        }
        self.store.put(self.store.join(record.run_uri, "manifest.json"), _dumps(manifest))


def provider_error(provider: str, doing: str, exc: "openai.APIStatusError") -> FtopsError:
    """An HTTP error from the provider in the controller's classes, with the provider's message."""
    body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error")
    error: dict[str, Any] = inner if isinstance(inner, dict) else body  # the SDK unwraps {"error": ...}
    message = str(error.get("message") or exc.message)
    detail = ", ".join(f"{k} {error[k]}" for k in ("param", "code") if error.get(k))
    text = f"provider {provider}: {doing}: {exc.status_code} {message}" + (f" ({detail})" if detail else "")
    status = exc.status_code
    if status == 429:
        after = _retry_after(exc.response.headers.get("retry-after"))
        return TemporaryError(f"{text}; retrying after {after or 'the backoff'}s", retry_after=after)
    if status >= 500 or status == 408 or status == 409:
        return TemporaryError(f"{text}; retrying")
    if status in (401, 403):
        return TemporaryError(f"{text}: fix the API key in its Secret; retrying with backoff")
    return PermanentError(text)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _client(provider: ApiProvider, api_key: str) -> "openai.OpenAI":
    """The SDK client: its own retries off (the controller's backoff is the one that counts)."""
    import openai

    return openai.OpenAI(base_url=provider.base_url, api_key=api_key, organization=provider.organization or None,
                         max_retries=0, timeout=openai.Timeout(TIMEOUT_S, connect=CONNECT_TIMEOUT_S))


def _json(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    return str(value)


def _dumps(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _sha256_file(path: str) -> str | None:
    from controller.fsutil import sha256_file

    try:
        return sha256_file(path)
    except FileNotFoundError:
        return None
