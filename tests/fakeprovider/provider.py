"""The fake provider's state: files, fine-tuning jobs with their events and checkpoints, and the
models those jobs produce. No HTTP here (server.py speaks it); every method is what one API
call does, raising `ProviderError` with the status and error body the real API answers.

It behaves like OpenAI's fine-tuning API where ftops can tell the difference:

- Files (`purpose=fine-tune`) are checked line by line as chat JSONL when uploaded; a bad line
  is a 400 naming it (`invalid_file_format`), nothing is stored.
- A job starts `validating_files`; `advance()` moves every live job one step, as time passing
  at the provider would: validating_files -> queued -> running (one checkpoint and a metrics
  event per epoch) -> succeeded, with `fine_tuned_model` `ft:<base>:<org>:<suffix>:<id>` and the
  trained tokens. A training file under 10 examples fails the job while validating
  (`invalid_n_examples`), as the real one does. `fail_job` fails a running job with a given
  reason (an outage at the provider). Nothing here sleeps: tests call advance(), or set
  `advance_on_poll` so that each read of a job is one tick of the provider's clock (a controller
  in another process then sees its job move as it polls).
- Lists are newest first with cursor pagination (`after` an id, `limit`, `has_more`); jobs can
  be filtered by `metadata[k]=v`.
- `fail_next(429|500, n)` answers the next n requests with that status (429 with retry-after),
  as a provider under load does.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from fakeprovider.answer import Answerer, Example, estimate_tokens

FINE_TUNABLE = ("gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06", "gpt-4.1-mini-2025-04-14")
ORG = "org-ftops-fake"
MIN_EXAMPLES = 10
ROLES = ("system", "developer", "user", "assistant", "tool")
LINE_KEYS = ("messages", "tools", "parallel_tool_calls", "functions")


class ProviderError(Exception):
    """What the API answers instead of a result: `{"error": {message, type, param, code}}`."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int
    examples: list[Example] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.content), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed", "expires_at": None,
                "status_details": None}


@dataclass
class Job:
    id: str
    model: str
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    suffix: str | None
    metadata: dict[str, str] | None
    seed: int
    created_at: int
    status: str = "validating_files"
    epoch: int = 0
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    error: dict[str, Any] | None = None
    result_files: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "fine_tuning.job", "created_at": self.created_at, "error": self.error,
                "fine_tuned_model": self.fine_tuned_model, "finished_at": self.finished_at,
                "hyperparameters": dict(self.hyperparameters), "model": self.model, "organization_id": ORG,
                "result_files": list(self.result_files), "seed": self.seed, "status": self.status,
                "trained_tokens": self.trained_tokens, "training_file": self.training_file,
                "validation_file": self.validation_file, "estimated_finish": None, "integrations": [],
                "metadata": self.metadata, "user_provided_suffix": self.suffix,
                "method": {"type": "supervised", "supervised": {"hyperparameters": dict(self.hyperparameters)}}}


@dataclass
class FakeProvider:
    """One provider account. Thread-safe: the HTTP server calls it from its request threads."""

    api_keys: tuple[str, ...] = ("sk-fake-provider-key",)
    base_models: tuple[str, ...] = FINE_TUNABLE
    now: int = 1_800_000_000
    """The provider's clock (Unix seconds); advance() moves it."""
    seconds_per_step: int = 60
    noise: dict[str, float] = field(default_factory=dict)
    """model id -> share of answers the model gets wrong (deterministically, by prompt)."""
    general_knowledge: list[Example] = field(default_factory=list)
    """What every model (base or fine-tuned) knows before fine-tuning: answers it gives when a
    prompt is far from anything it was trained on."""
    files: dict[str, StoredFile] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    """(method, path) of every request, in order."""
    injected: list[tuple[int, int]] = field(default_factory=list)
    """(status, retry-after seconds) to answer the next requests with."""
    filters_metadata: bool = True
    """False: `metadata[k]=v` on the job list is ignored, as some compatible providers do."""
    advance_on_poll: bool = False
    """True: each read of a live job moves it one step (the provider's clock ticks once per poll),
    so a controller polling from another process sees its job progress without any sleep here."""
    noise_for_new_models: float = 0.0
    """The noise of every model fine-tuned from now on (a provider-side regression to test a gate)."""
    _serial: int = 0
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # ------------------------------------------------------------------ test controls
    def fail_next(self, status: int, count: int = 1, retry_after: int = 2) -> None:
        with self._lock:
            self.injected.extend([(status, retry_after)] * count)

    def advance(self, steps: int = 1) -> None:
        """Time passes at the provider: every live job moves `steps` steps on."""
        for _ in range(steps):
            with self._lock:
                self.now += self.seconds_per_step
                for job in list(self.jobs.values()):
                    if not job.terminal:
                        self._step(job)

    def settle(self, limit: int = 100) -> None:
        """Advance until no job is live."""
        for _ in range(limit):
            if all(j.terminal for j in self.jobs.values()):
                return
            self.advance()
        raise AssertionError("jobs still live after 100 steps")

    def poll(self, job_id: str) -> Job:
        """A read of one job, as the server answers GET /fine_tuning/jobs/{id}."""
        with self._lock:
            job = self.get_job(job_id)
            if self.advance_on_poll and not job.terminal:
                self.now += self.seconds_per_step
                self._step(job)
            return job

    def fail_job(self, job_id: str, message: str, code: str = "server_error") -> None:
        with self._lock:
            job = self.jobs[job_id]
            self._fail(job, code, message, None)

    def jobs_for_run(self, run_id: str) -> list[Job]:
        return [j for j in self.jobs.values() if (j.metadata or {}).get("ftops-run-id") == run_id]

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p in self.requests if m == method and p == path)

    # ------------------------------------------------------------------ request gate
    def admit(self, method: str, path: str, authorization: str | None) -> None:
        """Every request: recorded, then the injected failures, then the API key."""
        with self._lock:
            self.requests.append((method, path))
            if self.injected:
                status, retry_after = self.injected.pop(0)
                if status == 429:
                    raise ProviderError(429, "Rate limit reached for requests. Please try again in "
                                             f"{retry_after}s.", "requests", None, "rate_limit_exceeded",
                                        {"retry-after": str(retry_after)})
                raise ProviderError(status, "The server had an error while processing your request. Sorry about that!",
                                    "server_error")
        key = authorization[7:] if authorization and authorization.startswith("Bearer ") else ""
        if key not in self.api_keys:
            shown = f"{key[:3]}***{key[-4:]}" if len(key) > 8 else key or "none"
            raise ProviderError(401, f"Incorrect API key provided: {shown}. You can find your API key at "
                                     "https://platform.openai.com/account/api-keys.", "invalid_request_error", None,
                                "invalid_api_key")

    # ------------------------------------------------------------------ files
    def create_file(self, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        if purpose != "fine-tune":
            raise ProviderError(400, f"'{purpose}' is not one of ['fine-tune', 'assistants', 'batch', 'vision', "
                                     "'user_data'] - 'purpose'", param="purpose")
        if not filename.endswith(".jsonl"):
            raise ProviderError(400, "Invalid file format for Fine-Tuning API. Must be .jsonl", param="file",
                                code="invalid_file_format")
        examples = check_chat_jsonl(content)
        with self._lock:
            stored = StoredFile(self._id("file-"), filename, purpose, content, self.now, examples)
            self.files[stored.id] = stored
            return stored.to_json()

    def get_file(self, file_id: str) -> StoredFile:
        found = self.files.get(file_id)
        if found is None:
            raise ProviderError(404, f"No such File object: {file_id}", param="id")
        return found

    def list_files(self, purpose: str | None, after: str | None, limit: int, order: str) -> dict[str, Any]:
        items = [f for f in self.files.values() if purpose is None or f.purpose == purpose]  # oldest first
        if order != "asc":
            items.reverse()
        return page([f.to_json() for f in items], after, limit)

    def delete_file(self, file_id: str) -> dict[str, Any]:
        with self._lock:
            self.get_file(file_id)
            del self.files[file_id]
        return {"id": file_id, "object": "file", "deleted": True}

    # ------------------------------------------------------------------ jobs
    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model")
        if not isinstance(model, str) or model not in self.base_models:
            raise ProviderError(400, f"Model {model} is not available for fine-tuning or does not exist.",
                                param="model", code="model_not_available")
        training = body.get("training_file")
        if not isinstance(training, str) or training not in self.files:
            raise ProviderError(400, f"invalid training_file: {training}", param="training_file",
                                code="invalid_training_file")
        validation = body.get("validation_file")
        if validation is not None and validation not in self.files:
            raise ProviderError(400, f"invalid validation_file: {validation}", param="validation_file",
                                code="invalid_validation_file")
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64):
            raise ProviderError(400, "suffix must be a string of at most 64 characters", param="suffix")
        metadata = body.get("metadata")
        if metadata is not None:
            if not isinstance(metadata, dict) or len(metadata) > 16 or any(
                    not isinstance(k, str) or not isinstance(v, str) or len(k) > 64 or len(v) > 512
                    for k, v in metadata.items()):
                raise ProviderError(400, "metadata: at most 16 string keys of up to 64 characters, values of up to 512",
                                    param="metadata")
        method = body.get("method") or {}
        hyper = ((method.get("supervised") or {}).get("hyperparameters") if method.get("type") == "supervised"
                 else None) or body.get("hyperparameters") or {}
        for name, bounds in (("n_epochs", (1, 50)), ("batch_size", (1, 256)), ("learning_rate_multiplier", (0, 10))):
            value = hyper.get(name, "auto")
            if value != "auto" and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                    or not bounds[0] <= value <= bounds[1] or (name != "learning_rate_multiplier" and
                                                                               not isinstance(value, int))):
                raise ProviderError(400, f"invalid hyperparameters.{name}: {value!r}", param=f"hyperparameters.{name}")
        with self._lock:
            job = Job(self._id("ftjob-"), model, training, validation,
                      {k: hyper.get(k, "auto") for k in ("n_epochs", "batch_size", "learning_rate_multiplier")},
                      suffix, metadata, int(body.get("seed") or 42), self.now)
            self.jobs[job.id] = job
            self._event(job, "info", f"Created fine-tuning job: {job.id}")
            self._event(job, "info", "Validating training file: " + training +
                        (f" and validation file: {validation}" if validation else ""))
            return job.to_json()

    def get_job(self, job_id: str) -> Job:
        found = self.jobs.get(job_id)
        if found is None:
            raise ProviderError(404, f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id",
                                code="fine_tuning_job_not_found")
        return found

    def list_jobs(self, after: str | None, limit: int, metadata: dict[str, str]) -> dict[str, Any]:
        items = list(reversed(self.jobs.values()))  # newest first
        if self.filters_metadata:
            items = [j for j in items if all((j.metadata or {}).get(k) == v for k, v in metadata.items())]
        return page([j.to_json() for j in items], after, limit)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self.get_job(job_id)
            if job.terminal:
                raise ProviderError(400, f"Job has already completed: {job_id}", param=None, code="invalid_request")
            job.status, job.finished_at = "cancelled", self.now
            self._event(job, "info", "Fine-tuning job cancelled")
            return job.to_json()

    def list_events(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        return page(list(reversed(self.get_job(job_id).events)), after, limit)

    def list_checkpoints(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        return page(list(reversed(self.get_job(job_id).checkpoints)), after, limit)

    # ------------------------------------------------------------------ models
    def models(self) -> list[dict[str, Any]]:
        out = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "system"} for m in self.base_models]
        out += [{"id": j.fine_tuned_model, "object": "model", "created": j.finished_at, "owned_by": ORG}
                for j in self.jobs.values() if j.status == "succeeded" and j.fine_tuned_model]
        return out

    def answerer(self, model: str) -> Answerer:
        """The model as it answers: what it was trained on (a fine-tuned one), what it knew before."""
        if model in self.base_models:
            return Answerer(model, [], self.general_knowledge, self.noise.get(model, 0.0))
        job = next((j for j in self.jobs.values() if j.fine_tuned_model == model and j.status == "succeeded"), None)
        if job is None:
            raise ProviderError(404, f"The model `{model}` does not exist or you do not have access to it.",
                                param=None, code="model_not_found")
        return Answerer(model, self.files[job.training_file].examples, self.general_knowledge, self.noise.get(model, 0.0))

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str):
            raise ProviderError(400, "you must provide a model parameter", param="model")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ProviderError(400, "'messages' must be a non-empty array of message objects", param="messages")
        answerer = self.answerer(model)
        text = answerer.answer(messages)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        finish = "stop"
        if isinstance(max_tokens, int) and estimate_tokens(text) > max_tokens:
            text, finish = text[: max_tokens * 4], "length"
        with self._lock:
            self._serial += 1
            serial = self._serial
        prompt_tokens = sum(estimate_tokens(str(m.get("content") or "")) for m in messages)
        return {"id": f"chatcmpl-{serial:08d}", "object": "chat.completion", "created": self.now, "model": model,
                "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                             "message": {"role": "assistant", "content": text, "refusal": None}}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": estimate_tokens(text),
                          "total_tokens": prompt_tokens + estimate_tokens(text)},
                "system_fingerprint": "fp_fake"}

    # ------------------------------------------------------------------ job lifecycle
    def _step(self, job: Job) -> None:
        if job.status == "validating_files":
            examples = len(self.files[job.training_file].examples)
            if examples < MIN_EXAMPLES:
                self._fail(job, "invalid_n_examples", f"Training file has {examples} example(s), but must have at least "
                                                      f"{MIN_EXAMPLES} examples", "training_file")
                return
            self._resolve_hyperparameters(job)
            job.status = "queued"
            self._event(job, "info", "Files validated, moving job to queued state")
        elif job.status == "queued":
            job.status = "running"
            self._event(job, "info", "Fine-tuning job started")
        elif job.status == "running":
            epochs = int(job.hyperparameters["n_epochs"])
            job.epoch += 1
            loss = round(1.5 / (job.epoch + 1), 4)
            step = job.epoch * max(1, len(self.files[job.training_file].examples) // int(job.hyperparameters["batch_size"]))
            self._event(job, "info", f"Step {step}: training loss={loss}", "metrics",
                        {"step": step, "train_loss": loss, "valid_loss": round(loss * 1.1, 4), "epoch": job.epoch})
            base = job.model.split("-20")[0]
            checkpoint_model = f"ft:{base}:{ORG}:{job.suffix or ''}:{job.id[-8:]}:ckpt-step-{step}"
            job.checkpoints.append({"id": self._id("ftckpt-"), "object": "fine_tuning.job.checkpoint",
                                    "created_at": self.now, "fine_tuned_model_checkpoint": checkpoint_model,
                                    "fine_tuning_job_id": job.id, "step_number": step,
                                    "metrics": {"step": step, "train_loss": loss, "valid_loss": round(loss * 1.1, 4)}})
            if job.epoch >= epochs:
                job.status, job.finished_at = "succeeded", self.now
                job.fine_tuned_model = f"ft:{base}:{ORG}:{job.suffix or ''}:{job.id[-8:]}"
                tokens = sum(e.tokens for e in self.files[job.training_file].examples)
                job.trained_tokens = tokens * epochs
                results = StoredFile(self._id("file-"), "step_metrics.csv", "fine-tune-results",
                                     b"step,train_loss\n" + "".join(f"{c['step_number']},{c['metrics']['train_loss']}\n"
                                                                    for c in job.checkpoints).encode(), self.now)
                self.files[results.id] = results
                job.result_files = [results.id]
                if self.noise_for_new_models:
                    self.noise[job.fine_tuned_model] = self.noise_for_new_models
                self._event(job, "info", f"New fine-tuned model created: {job.fine_tuned_model}")
                self._event(job, "info", "The job has successfully completed")

    def _resolve_hyperparameters(self, job: Job) -> None:
        """`auto` as OpenAI resolves it from the dataset's size (its published rule for epochs)."""
        n = len(self.files[job.training_file].examples)
        h = job.hyperparameters
        if h["n_epochs"] == "auto":
            h["n_epochs"] = auto_epochs(n)
        if h["batch_size"] == "auto":
            h["batch_size"] = max(1, min(256, round(n * 0.002)))
        if h["learning_rate_multiplier"] == "auto":
            h["learning_rate_multiplier"] = 1.8

    def _fail(self, job: Job, code: str, message: str, param: str | None) -> None:
        job.status, job.finished_at = "failed", self.now
        job.error = {"code": code, "message": message, "param": param}
        self._event(job, "error", message)

    def _event(self, job: Job, level: str, message: str, type_: str = "message", data: dict | None = None) -> None:
        job.events.append({"id": self._id("ftevent-"), "object": "fine_tuning.job.event", "created_at": self.now,
                           "level": level, "message": message, "data": data or {}, "type": type_})

    def _id(self, prefix: str) -> str:
        with self._lock:
            self._serial += 1
            return prefix + hashlib.sha256(f"{prefix}{self._serial}".encode()).hexdigest()[:24]


def auto_epochs(n_examples: int) -> int:
    """OpenAI's documented default: 3 epochs, raised for small datasets and lowered for large
    ones so that examples x epochs stays within 100-25,000 (1-25 epochs)."""
    epochs = 3
    if n_examples * epochs < 100:
        epochs = min(25, 100 // max(1, n_examples))
    elif n_examples * epochs > 25_000:
        epochs = max(1, 25_000 // n_examples)
    return epochs


def page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """Cursor pagination as the API does it: the items after the one with id `after`."""
    if not 1 <= limit <= 100:
        raise ProviderError(400, f"limit must be between 1 and 100, not {limit}", param="limit")
    start = 0
    if after is not None:
        ids = [i["id"] for i in items]
        if after not in ids:
            raise ProviderError(400, f"after: no object with id {after}", param="after")
        start = ids.index(after) + 1
    chunk = items[start:start + limit]
    return {"object": "list", "data": chunk, "has_more": start + limit < len(items),
            "first_id": chunk[0]["id"] if chunk else None, "last_id": chunk[-1]["id"] if chunk else None}


def check_chat_jsonl(content: bytes) -> list[Example]:
    """The provider's check of a fine-tuning file: every line a JSON object with `messages`, each
    message a known role with string content, at least one from the assistant. The first bad
    line is a 400 that names it."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise ProviderError(400, "Invalid file format. The file is not UTF-8 text.", param="file",
                            code="invalid_file_format") from None
    examples: list[Example] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue

        def bad(why: str) -> ProviderError:
            return ProviderError(400, f"Invalid file format. Line {number}: {why}", param="file",
                                 code="invalid_file_format")

        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise bad("is not valid JSON") from None
        if not isinstance(record, dict):
            raise bad("must be a JSON object")
        unknown = [k for k in record if k not in LINE_KEYS]
        if unknown:
            raise bad(f"unrecognized key '{unknown[0]}'; each line holds 'messages' (and optionally 'tools')")
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad("key 'messages' must be a non-empty list")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise bad(f"each message needs a role, one of {', '.join(ROLES)}")
            if not isinstance(m.get("content"), str) and not (m.get("role") == "assistant" and m.get("tool_calls")):
                raise bad(f"message with role '{m.get('role')}' needs string content")
        if not any(m["role"] == "assistant" for m in messages):
            raise bad("at least one message must be from the assistant")
        examples.append(Example.from_messages(messages))
    if not examples:
        raise ProviderError(400, "Invalid file format. The file has no examples.", param="file",
                            code="invalid_file_format")
    return examples
