"""The api backend against the fake provider, through the official openai SDK over HTTP: one job
per run id whatever happens (restarts with or without the controller's own files, a crash
between creating the job and recording it, a provider that ignores the metadata filter), files
uploaded once, the provider's errors in the controller's two classes, the manifest as the run's
artifacts, and the train step stalling with the provider's reason."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from fakeprovider.fixtures import KEY_ENV, PROVIDER, api_run, api_spec_text, fake_provider, operator_override  # noqa: E402,F401
from fakes import FakeBackend, MemoryStore  # noqa: E402

from controller.backends.api_finetune import ApiFineTuneBackend  # noqa: E402
from controller.backends.by_method import ByMethod  # noqa: E402
from controller.catalog import OperatorConfig, load_operator_config  # noqa: E402
from controller.errors import PermanentError, TemporaryError  # noqa: E402
from controller.seams import Backend, Phase, RunNotFound, RunReason  # noqa: E402

JOBS = "/v1/fine_tuning/jobs"
FILES = "/v1/files"


def operator(served, **provider) -> OperatorConfig:
    data = operator_override(served.url)
    data["providers"][PROVIDER].update(provider)
    base = load_operator_config(None).model_dump(by_alias=True)
    return OperatorConfig.model_validate({**base, "providers": {**base["providers"], **data["providers"]}})


def backend(tmp_path: Path, served, store=None, root: str = "api", **provider) -> ApiFineTuneBackend:
    return ApiFineTuneBackend(tmp_path / root, store or MemoryStore(), operator(served, **provider),
                              env={KEY_ENV: served.provider.api_keys[0]})


def test_a_run_uploads_its_split_once_creates_one_job_and_follows_it_to_a_manifest(fake_provider, tmp_path):
    provider = fake_provider.provider
    store = MemoryStore()
    api = backend(tmp_path, fake_provider, store)
    assert isinstance(api, Backend)
    run = api_run(tmp_path / "data")
    with pytest.raises(RunNotFound):
        api.status(run.run_id)
    state = api.submit(run)
    assert state.phase is Phase.PENDING and state.handles["job"].startswith("ftjob-")
    assert api.submit(run).handles["job"] == state.handles["job"]  # the same job, nothing new
    [job] = provider.jobs.values()
    assert job.metadata == {"ftops-run-id": run.run_id, "ftops-spec": "triage-api"} and job.suffix == run.run_id
    assert job.hyperparameters["n_epochs"] == 2 and job.validation_file is not None
    assert provider.count("POST", FILES) == 2 and provider.count("POST", JOBS) == 1
    uploaded = provider.files[job.training_file]
    assert uploaded.filename.startswith(f"ftops-triage-api-{run.run_id}-training-")
    lines = [json.loads(line) for line in uploaded.content.decode().splitlines()]
    assert len(lines) == 51 and all(set(line) == {"messages"} for line in lines)  # the provider's format only

    provider.advance()  # validated -> queued
    assert api.status(run.run_id).phase is Phase.PENDING
    provider.advance()  # running
    assert api.status(run.run_id).phase is Phase.RUNNING
    assert store.manifest(store.run_uri("triage-api", run.run_id)) is None  # not finished
    provider.settle()
    done = api.status(run.run_id)
    assert done.phase is Phase.SUCCEEDED and done.handles["fineTunedModel"] == job.fine_tuned_model
    manifest = store.manifest(store.run_uri("triage-api", run.run_id))
    assert manifest is not None and manifest.run_id == run.run_id
    block = manifest.data["provider"]
    assert block["job"] == job.id and block["fineTunedModel"].startswith("ft:gpt-4o-mini:")
    assert block["trainingFile"] == job.training_file and block["trainedTokens"] == job.trained_tokens > 0
    assert block["hyperparameters"]["n_epochs"] == 2  # as the provider resolved them
    events = store.get_verified(manifest_uri := store.run_uri("triage-api", run.run_id), "provider/events.jsonl", manifest)
    assert b"New fine-tuned model created" in events
    metrics = [json.loads(line) for line in store.get_verified(manifest_uri, "metrics.jsonl", manifest).splitlines()]
    assert [m["step"] for m in metrics] == sorted(m["step"] for m in metrics) and len(metrics) == 2
    assert "successfully completed" in api.logs(run.run_id) and len(api.logs(run.run_id, tail=1).splitlines()) == 1
    assert api.submit(run).phase is Phase.SUCCEEDED and provider.count("POST", JOBS) == 1


def test_a_restarted_controller_without_its_files_finds_the_job_and_the_uploads_again(fake_provider, tmp_path):
    provider = fake_provider.provider
    run = api_run(tmp_path / "data")
    first = backend(tmp_path, fake_provider, root="first")
    job = first.submit(run).handles["job"]
    again = backend(tmp_path, fake_provider, root="second")  # a new controller home: nothing of its own
    with pytest.raises(RunNotFound):
        again.status(run.run_id)  # not this backend's yet: the train step submits
    assert again.submit(run).handles["job"] == job
    assert provider.count("POST", JOBS) == 1 and provider.count("POST", FILES) == 2


def test_killed_between_creating_the_job_and_recording_it_no_second_job(fake_provider, tmp_path):
    """The controller dies right after the provider created the job, before it wrote the id."""
    import openai

    provider = fake_provider.provider

    class Killed(BaseException):
        pass

    def dying(p, key):
        client = openai.OpenAI(base_url=p.base_url, api_key=key, max_retries=0)
        create = client.fine_tuning.jobs.create

        def create_then_die(**kwargs):
            create(**kwargs)
            raise Killed()

        client.fine_tuning.jobs.create = create_then_die  # type: ignore[method-assign]
        return client

    run = api_run(tmp_path / "data")
    api = ApiFineTuneBackend(tmp_path / "api", MemoryStore(), operator(fake_provider), clients=dying,
                             env={KEY_ENV: provider.api_keys[0]})
    with pytest.raises(Killed):
        api.submit(run)
    assert provider.count("POST", JOBS) == 1
    restarted = backend(tmp_path, fake_provider)  # same home, the record has no job id
    assert restarted.status(run.run_id).phase is Phase.PENDING  # found by its metadata
    restarted.submit(run)
    assert len(provider.jobs_for_run(run.run_id)) == 1 and provider.count("POST", JOBS) == 1
    assert provider.count("POST", FILES) == 2


def test_a_provider_that_ignores_the_metadata_filter_is_paged_through(fake_provider, tmp_path):
    provider = fake_provider.provider
    provider.filters_metadata = False
    others = [api_run(tmp_path / f"other{i}", api_spec_text(name=f"other-{i}")) for i in range(3)]
    run = api_run(tmp_path / "data")
    api = backend(tmp_path, fake_provider)
    job = api.submit(run).handles["job"]
    for other in others:  # newer jobs of other runs, and 230 more, push this run's job back
        api.submit(other)
    for i in range(230):
        provider.create_job({"model": "gpt-4o-mini-2024-07-18", "training_file": provider.jobs[job].training_file,
                             "metadata": {"ftops-run-id": f"x{i}"}})
    fresh = backend(tmp_path, fake_provider, root="fresh")
    listed_before = provider.count("GET", JOBS)
    assert fresh.submit(run).handles["job"] == job
    assert provider.count("GET", JOBS) - listed_before >= 3  # three pages of 100
    assert len(provider.jobs_for_run(run.run_id)) == 1


def test_a_bad_line_is_permanent_with_the_providers_message(fake_provider, tmp_path):
    run = api_run(tmp_path / "data", bad_line=json.dumps({"messages": [{"role": "robot", "content": "beep"}]}))
    with pytest.raises(PermanentError, match=r"Invalid file format\. Line 52: each message needs a role.*param file, "
                                             r"code invalid_file_format"):
        backend(tmp_path, fake_provider).submit(run)
    assert not fake_provider.provider.jobs


def test_a_model_the_provider_does_not_fine_tune_is_permanent_with_its_message(fake_provider, tmp_path):
    run = api_run(tmp_path / "data", api_spec_text(model="gpt-3.5-turbo-0125"))
    api = backend(tmp_path, fake_provider, models={})  # the operator lists no models: the provider decides
    with pytest.raises(PermanentError, match="Model gpt-3.5-turbo-0125 is not available for fine-tuning.*model_not_available"):
        api.submit(run)
    listed = backend(tmp_path, fake_provider, root="listed")  # the operator's list refuses it before any call
    before = len(fake_provider.provider.requests)
    with pytest.raises(PermanentError, match="spec.method.model: 'gpt-3.5-turbo-0125' is not a model fakeai fine-tunes"):
        listed.submit(run)
    assert len(fake_provider.provider.requests) == before


def test_an_unknown_provider_lists_the_configured_ones(fake_provider, tmp_path):
    run = api_run(tmp_path / "data", api_spec_text(provider="fakeia"))
    with pytest.raises(PermanentError, match="'fakeia' is not a provider the operator configured. Did you mean 'fakeai'"):
        backend(tmp_path, fake_provider).submit(run)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_rate_limits_and_server_errors_are_temporary_and_not_retried_by_the_sdk(fake_provider, tmp_path, status):
    provider = fake_provider.provider
    api = backend(tmp_path, fake_provider)
    run = api_run(tmp_path / "data")
    provider.fail_next(status, retry_after=7)
    with pytest.raises(TemporaryError) as caught:
        api.submit(run)
    assert len(provider.requests) == 1  # the SDK did not retry: the controller's backoff decides
    assert caught.value.retry_after == (7.0 if status == 429 else None)
    assert api.submit(run).phase is Phase.PENDING and provider.count("POST", JOBS) == 1


def test_a_refused_key_and_a_missing_one_are_temporary_and_say_what_to_fix(fake_provider, tmp_path):
    run = api_run(tmp_path / "data")
    wrong = ApiFineTuneBackend(tmp_path / "api", MemoryStore(), operator(fake_provider), env={KEY_ENV: "sk-wrong-key-1234"})
    with pytest.raises(TemporaryError, match="401 Incorrect API key provided.*fix the API key"):
        wrong.submit(run)
    missing = ApiFineTuneBackend(tmp_path / "api2", MemoryStore(), operator(fake_provider), env={})
    with pytest.raises(TemporaryError, match=f"set {KEY_ENV} \\(from Secret fakeai, key api-key\\)"):
        missing.submit(run)


def test_a_job_that_fails_at_the_provider_is_failed_with_its_reason(fake_provider, tmp_path):
    api = backend(tmp_path, fake_provider)
    run = api_run(tmp_path / "data", examples=8)  # 6 training examples: the provider wants 10
    api.submit(run)
    fake_provider.provider.advance()
    state = api.status(run.run_id)
    assert state.phase is Phase.FAILED and state.reason == RunReason.PROVIDER_FAILED
    assert "Training file has 6 example(s), but must have at least 10 examples (code invalid_n_examples" in state.message


def test_cancel_cancels_the_job_and_a_finished_one_stays(fake_provider, tmp_path):
    provider = fake_provider.provider
    api = backend(tmp_path, fake_provider)
    run = api_run(tmp_path / "data")
    api.submit(run)
    state = api.cancel(run.run_id)
    assert state.phase is Phase.FAILED and state.reason == RunReason.CANCELLED
    [job] = provider.jobs.values()
    assert job.status == "cancelled"
    assert api.submit(run).reason == RunReason.CANCELLED and provider.count("POST", JOBS) == 1
    with pytest.raises(RunNotFound):
        api.cancel("0123456789ab")


def test_by_method_routes_api_runs_to_the_provider_and_the_rest_to_the_other_backend(fake_provider, tmp_path):
    from controller.seams import Run
    from controller.spec.load import load_spec_text

    other = FakeBackend(MemoryStore())
    router = ByMethod(other, backend(tmp_path, fake_provider))
    assert isinstance(router, Backend) and router.name == other.name
    api = api_run(tmp_path / "data")
    lora_spec = load_spec_text(LORA_SPEC, "specs/triage.yaml").spec
    assert lora_spec is not None
    config = api.config.model_copy(update={"run_id": "fedcba987654", "method": lora_spec.spec.method})
    lora = Run(config, lora_spec, api.lineage)
    assert router.submit(api).handles["backend"] == "api"
    router.submit(lora)
    assert [r.run_id for r in other.submitted] == [lora.run_id] and router.status(lora.run_id).phase is Phase.PENDING
    assert router.status(api.run_id).handles["job"] and router.cancel(api.run_id).reason == RunReason.CANCELLED
    assert not fake_provider.provider.jobs_for_run(lora.run_id)
    with pytest.raises(RunNotFound):
        router.status("0123456789ab")


LORA_SPEC = """\
apiVersion: ftops.dev/v1alpha1
kind: FineTune
metadata: {name: triage, owner: support}
spec:
  baseModel: {uri: hf://org/base, revision: 0e9e39f249a16976918f6564b8830bc894c89659}
  dataset: {path: data/tickets.jsonl}
  method: {type: lora, r: 8}
"""


# ----------------------------------------------------------------------------- the train step


class SplitData:
    """The data step's outcome: a real prepared split (the tiny task), optionally with a bad line."""

    def __init__(self, root: Path, examples: int = 60, bad_line: str | None = None) -> None:
        self.root, self.examples, self.bad_line = root, examples, bad_line

    def prepare(self, commit, finetune):
        import hashlib

        from fakeprovider.fixtures import write_splits

        from controller.data.pipeline import DataReady
        from controller.data.prepare import Prepared
        from controller.data.review import ReviewStatus
        from controller.reconcile.context import PreparedData

        folder = self.root / finetune.metadata.name / commit[:12]
        train, test = write_splits(folder, self.examples, bad_line=self.bad_line)
        manifest = {"splits": {s: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for s, p in
                               (("train", train), ("test", test))}}
        review = ReviewStatus(examples=self.examples, sample=6, reviewed=6, approved=6, sample_fraction=0.1,
                              min_approval=0.95)
        return PreparedData(Prepared(folder, manifest), review, DataReady(True, "DataReady", "ready"))


def _step_world(tmp_path: Path, served, data: SplitData):
    sys.path.insert(0, str(TESTS / "reconcile"))
    from world import make_world

    world = make_world(tmp_path)
    api = ApiFineTuneBackend(tmp_path / "api", world.store, operator(served), env={KEY_ENV: served.provider.api_keys[0]},
                             clock=world.clock)
    world.deps = replace(world.deps, backend=ByMethod(world.backend, api), data=data, operator=operator(served))
    return world


def _pass(world, ctx, step):
    """One step as the reconciler runs it: its result (or exception) through outcome.compute."""
    from controller.reconcile import data as data_step
    from controller.reconcile import outcome
    from controller.reconcile.outcome import SpecState
    from controller.status import step as step_named

    data_step.run(ctx, world.deps)
    try:
        result = step.run(ctx, world.deps)
    except Exception as exc:  # noqa: BLE001 - classified by outcome.compute, as the reconciler does
        result = exc
    return result, outcome.compute(step_named("train"), result, (), spec=ctx.name, run_id=ctx.run_id, revision="c" * 40,
                                   content_key="k", state=SpecState(), now=world.clock.time(), config=world.deps.config)


def test_the_train_step_records_the_job_and_stalls_with_the_providers_reason_when_it_fails(fake_provider, tmp_path):
    from controller.reconcile import train

    world = _step_world(tmp_path, fake_provider, SplitData(tmp_path / "prepared", examples=8))
    ctx = world.context(api_spec_text(name="triage"))
    result, out = _pass(world, ctx, train)
    assert type(result).__name__ == "Waiting"
    [submitted] = [r for r in out.records if r.kind == "run.submitted"]
    [job] = fake_provider.provider.jobs.values()
    assert submitted.payload["job"] == job.id and submitted.payload["backend"] == "api"
    assert submitted.payload["trainingFile"] == job.training_file and submitted.payload["validationFile"] == job.validation_file
    assert submitted.payload["baseModel"] == "api://fakeai/gpt-4o-mini-2024-07-18" and "image" not in submitted.payload
    fake_provider.provider.advance()
    result, out = _pass(world, ctx, train)
    assert type(result).__name__ == "Stalled" and out.state is not None and out.state.stalled_key == "k"
    assert "Training file has 6 example(s), but must have at least 10 examples" in result.message
    stalled = next(c for c in out.conditions if c.type == "Stalled")
    assert stalled.status == "True" and stalled.reason == "TrainingFailed" and "invalid_n_examples" in stalled.message


def test_the_train_step_stalls_on_a_file_the_provider_refuses(fake_provider, tmp_path):
    from controller.reconcile import train

    bad = json.dumps({"messages": [{"role": "user", "content": "hi"}]})  # no assistant turn
    world = _step_world(tmp_path, fake_provider, SplitData(tmp_path / "prepared", bad_line=bad))
    ctx = world.context(api_spec_text(name="triage"))
    result, out = _pass(world, ctx, train)
    assert isinstance(result, PermanentError)
    stalled = next(c for c in out.conditions if c.type == "Stalled")
    assert stalled.status == "True" and stalled.reason == "TrainingFailed"
    assert "at least one message must be from the assistant" in stalled.message and "Line 52" in stalled.message
    assert not fake_provider.provider.jobs


def test_the_train_step_finishes_with_the_provider_record_in_the_ledger(fake_provider, tmp_path):
    from controller.reconcile import train

    world = _step_world(tmp_path, fake_provider, SplitData(tmp_path / "prepared"))
    ctx = world.context(api_spec_text(name="triage"))
    _pass(world, ctx, train)
    fake_provider.provider.settle()
    result, out = _pass(world, ctx, train)
    assert type(result).__name__ == "Done" and ctx.manifest is not None
    [finished] = [r for r in out.records if r.kind == "run.finished"]
    [job] = fake_provider.provider.jobs.values()
    assert finished.payload["provider"]["fineTunedModel"] == job.fine_tuned_model
    assert finished.payload["provider"]["job"] == job.id and set(finished.payload["artifacts"]) >= {"provider/job.json"}


def test_a_rate_limited_step_backs_off_at_least_as_long_as_the_provider_asks(fake_provider, tmp_path):
    from controller.reconcile import train

    world = _step_world(tmp_path, fake_provider, SplitData(tmp_path / "prepared"))
    ctx = world.context(api_spec_text(name="triage"))
    fake_provider.provider.fail_next(429, retry_after=40)
    result, out = _pass(world, ctx, train)
    assert isinstance(result, TemporaryError) and out.requeue_after == 40
    fake_provider.provider.fail_next(503)
    result, out = _pass(world, ctx, train)
    assert isinstance(result, TemporaryError) and out.requeue_after == world.deps.config.backoff(1)


# ----------------------------------------------------------------------------- the spec and its run id


def _load(text: str):
    from controller.spec.load import load_spec_text

    return load_spec_text(text, "specs/triage-api.yaml")


def _errors(text: str) -> list[str]:
    return [f"{i.line}:{i.field}: {i.message}" for i in _load(text).issues if i.severity == "error"]


def test_an_api_spec_names_the_providers_model_as_its_base_model():
    loaded = _load(api_spec_text(epochs="auto"))
    assert loaded.ok, [i.format() for i in loaded.issues]
    s = loaded.spec.spec
    assert s.base_model.uri == "api://fakeai/gpt-4o-mini-2024-07-18" and s.base_model.kind == "api"
    assert s.method.hyperparameters.epochs == "auto" and s.method.hyperparameters.batch_size == "auto"


@pytest.mark.parametrize("extra, where, says", [
    ("  hardware: {gpuType: a100-80gb}\n", "spec.hardware", "does not apply to method api"),
    ("  training: {epochs: 5, learningRate: 1.0e-4}\n", "spec.training",
     "epochs, learningRate do not apply to method api"),
    ("  baseModel: {uri: models/tiny}\n", "spec.baseModel", "remove spec.baseModel"),
])
def test_what_an_api_spec_does_not_take_is_refused_where_it_is_written(extra, where, says):
    text = api_spec_text() + extra
    line = text.splitlines().index(extra.splitlines()[0]) + 1
    errors = _errors(text)
    assert len(errors) == 1 and errors[0].startswith(f"{line}:{where}: ") and says in errors[0], errors


def test_the_training_fields_that_shape_the_upload_are_allowed():
    assert _load(api_spec_text() + "  training: {maxSeqLength: 4096}\n").ok


def test_an_api_spec_survives_being_dumped_and_read_back():
    """eval.json, run.json and the FineTune CR carry the spec with every default written out."""
    from controller.spec.finetune import FineTune

    spec = _load(api_spec_text() + "  training: {maxSeqLength: 1024}\n").spec
    assert FineTune.model_validate(spec.model_dump(mode="json", by_alias=True)) == spec
    assert FineTune.model_validate_json(spec.model_dump_json(by_alias=True)) == spec


@pytest.mark.parametrize("hyper, field, says", [
    ("{epochs: 0}", "spec.method.hyperparameters.epochs", "greater than or equal to 1"),
    ("{epochs: 51}", "spec.method.hyperparameters.epochs", "less than or equal to 50"),
    ("{learningRateMultiplier: 0}", "spec.method.hyperparameters.learningRateMultiplier", "greater than 0"),
    ("{batchSize: 300}", "spec.method.hyperparameters.batchSize", "less than or equal to 256"),
    ("{epochs: automatic}", "spec.method.hyperparameters.epochs", "auto"),
])
def test_hyperparameters_are_bounded_or_auto(hyper, field, says):
    errors = _errors(api_spec_text().replace("hyperparameters: {epochs: 2}", f"hyperparameters: {hyper}"))
    assert any(field in e and says in e for e in errors), errors


def test_a_model_ftops_trains_cannot_name_a_providers_model_and_the_method_list_names_api():
    lora = LORA_SPEC.replace("hf://org/base, revision: 0e9e39f249a16976918f6564b8830bc894c89659",
                             "api://openai/gpt-4o-mini-2024-07-18")
    assert any("fine-tune it with method type api" in e for e in _errors(lora))
    typo = _errors(api_spec_text().replace("type: api", "type: apy"))
    assert any("write one of lora, qlora, full, api. Did you mean 'api'?" in e for e in typo), typo


def test_the_operators_providers_check_the_provider_and_model_at_their_lines(fake_provider):
    from controller.catalog import api_method_problems
    from controller.spec.load import with_issues

    ops = operator(fake_provider)
    text = api_spec_text(provider="fakeia")
    loaded = _load(text)
    checked = with_issues(loaded, api_method_problems(loaded.spec, ops))
    [issue] = checked.errors
    assert not checked.ok and issue.field == "spec.method.provider" and issue.line == 8
    assert "Did you mean 'fakeai'? Configured: fakeai, openai" in issue.message
    loaded = _load(api_spec_text(model="gpt-4o-2024-08-06"))
    [issue] = with_issues(loaded, api_method_problems(loaded.spec, ops)).errors
    assert issue.field == "spec.method.model" and issue.line == 9 and "Write one of: gpt-4o-mini-2024-07-18" in issue.message
    loaded = _load(api_spec_text(provider="openai"))
    assert not api_method_problems(loaded.spec, ops)  # the shipped openai entry lists gpt-4o-mini


def test_the_run_id_hashes_what_the_provider_trains_on_and_nothing_else():
    from controller.identity import run_id

    def rid(text: str, md5: str = "0" * 32) -> str:
        spec = _load(text).spec
        assert spec is not None, _errors(text)
        return run_id(spec, md5, "template-a")

    base = api_spec_text()
    same = {rid(base), rid(base.replace("owner: support", "owner: other")),
            rid(base.replace("    hyperparameters", "    credentials: {name: team-key, key: k}\n    hyperparameters"))}
    assert len(same) == 1
    spec = _load(base).spec
    assert run_id(spec, "0" * 32, "template-b") == rid(base)  # no Kubernetes templates are rendered for it
    changed = [
        rid(base, "1" * 32),
        rid(base.replace("epochs: 2", "epochs: 3")),
        rid(base.replace("{epochs: 2}", "{epochs: 2, learningRateMultiplier: 0.5}")),
        rid(base.replace("{epochs: 2}", "{epochs: 2, batchSize: 4}")),
        rid(base.replace("    hyperparameters", "    seed: 7\n    hyperparameters")),
        rid(api_spec_text(model="gpt-4o-2024-08-06")),
        rid(api_spec_text(provider="openai")),
        rid(base.replace("{path: data/tickets.jsonl}", "{path: data/tickets.jsonl, testFraction: 0.2}")),
        rid(base + "  training: {maxSeqLength: 1024}\n"),
    ]
    assert len(set(changed)) == len(changed) and rid(base) not in changed


# ----------------------------------------------------------------------------- cost, validate


def test_the_cost_of_an_api_run_is_the_providers_price_per_training_token_times_epochs(fake_provider):
    from controller.cost import change_cost

    ops = operator(fake_provider)
    spec = _load(api_spec_text(epochs=4)).spec
    cost = change_cost("Train", spec, ops, data_bytes=None, data_tokens=1_000_000, examples=2000)
    assert cost is not None and [p.phase for p in cost.phases] == ["training", "evaluation"]
    train = cost.training
    assert train is not None and train.training_tokens == pytest.approx(1_000_000 * 0.85 * 4)
    assert train.usd == pytest.approx(3.4 * 3.00) and train.gpu_hours == 0  # $3.00 per million, 3.4M tokens
    assert any("$3.00 per million training tokens (fakeai, gpt-4o-mini-2024-07-18)" in a for a in train.assumptions)
    evaluation = cost.phases[1]
    assert 0 < evaluation.usd < train.usd and any("per million input / output tokens" in a for a in evaluation.assumptions)
    auto = change_cost("Train", _load(api_spec_text(epochs="auto")).spec, ops, None, 1_000_000, examples=20)
    assert auto is not None and auto.training is not None
    assert any("epochs auto: 5 for 17 training examples" in a for a in auto.training.assumptions)  # 17 x 3 < 100
    gpt4o = change_cost("Train", _load(api_spec_text(provider="openai", model="gpt-4o-2024-08-06", epochs=4)).spec, ops,
                        None, 1_000_000, examples=2000)
    assert gpt4o is not None and gpt4o.training is not None and gpt4o.training.usd == pytest.approx(3.4 * 25.00)


def test_ftops_validate_names_an_unknown_provider_at_its_line(fake_provider, tmp_path):
    import subprocess

    spec = tmp_path / "specs" / "triage-api.yaml"
    spec.parent.mkdir()
    spec.write_text(api_spec_text(provider="fakeia"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tickets.jsonl").write_text("{}\n")
    done = subprocess.run([sys.executable, "-m", "controller.cli", "validate", str(spec)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "specs/triage-api.yaml:8:15: error: spec.method.provider: 'fakeia' is not a provider the operator configured" \
        in done.stdout


# ----------------------------------------------------------------------------- serving


def test_the_api_deployer_refuses_a_run_without_its_passed_gate_and_starts_nothing(fake_provider, tmp_path):
    from controller.artifacts import FsspecStore
    from controller.identity import serving_config, serving_config_sha256
    from controller.seams import DeployRequest
    from controller.serve.api_deploy import ApiServing

    store = FsspecStore(str(tmp_path / "store"))
    text = api_spec_text(name="triage") + "  serving: {retriever: bm25, topK: 2}\n"
    run = api_run(tmp_path / "data", text)
    api = ApiFineTuneBackend(tmp_path / "api", store, operator(fake_provider), env={KEY_ENV: fake_provider.provider.api_keys[0]})
    api.submit(run)
    fake_provider.provider.settle()
    assert api.status(run.run_id).phase is Phase.SUCCEEDED
    deployer = ApiServing(tmp_path / "store", operator(fake_provider))
    config = serving_config_sha256(serving_config(run.finetune, None))
    request = DeployRequest(finetune=run.finetune, run_id=run.run_id, run_uri=store.run_uri("triage", run.run_id),
                            serving_id="s1", lineage=run.lineage, base_model=run.finetune.spec.base_model.uri,
                            serving_config_sha256=config)
    result = deployer.promote(request)
    assert result.outcome == "refused" and "no gate decision" in result.message
    assert [e["kind"] for e in result.events] == ["deploy.refused"]
    assert not deployer.owns("triage") and deployer.current("triage") is None
    assert not (tmp_path / "store" / "triage" / "serving-api" / "spawn.json").exists()  # no gateway started
    store.put(store.join(request.run_uri, "eval/gate.json"),
              json.dumps({"runId": run.run_id, "passed": True, "servingConfigSha256": "0" * 64}).encode())
    result = deployer.promote(request)
    assert result.outcome == "refused" and "not on the one being deployed" in result.message


def test_prune_cancels_the_provider_job_of_a_deleted_spec(fake_provider, tmp_path):
    from controller.reconcile import prune, train

    world = _step_world(tmp_path, fake_provider, SplitData(tmp_path / "prepared"))
    ctx = world.context(api_spec_text(name="triage"))
    _, out = _pass(world, ctx, train)
    for record in out.records:  # what the reconciler writes after the step
        world.ledger.append_once(record.kind, "triage", record.run_id, record.payload, key=record.key)
    [job] = fake_provider.provider.jobs.values()
    assert job.status == "validating_files"
    result = prune.run(prune.PruneContext("triage", "d" * 40), world.deps)
    assert type(result).__name__ == "Done" and job.status == "cancelled"
    assert result.records[-1].payload["cancelledRuns"] == [ctx.run_id]
