"""The embedded engine's generation loop: continuous batching over one unmerged base model with
several LoRA adapters (transformers + peft), for one machine and the tests.

Why continuous batching: a request is a sequence in one shared batch. One thread runs the loop;
between two decode steps it admits waiting sequences (each prefilled alone, its KV cache merged
into the batch's, left-padded to a common length) and drops the finished ones (their rows are
cut from the cache), so a short answer never waits for a long one and a new request never waits
for a batch to drain. On a CPU with a small model the cost of a step hardly depends on how many
rows it holds, which is where the throughput comes from (bench/bench_serve.py).

Why several adapters in one batch is correct: peft's mixed-adapter forward (`adapter_names`, one
per row) applies each row's own LoRA weights to that row only and the bare base to rows named
`__base__`; the base weights are shared and never merged. tests/serve/test_engine.py holds a
mixed batch to the tokens each adapter produces alone.

Per-sequence state: its sampling parameters (temperature, top_p, a seeded generator, stop
strings), the tokens so far, and the text already handed out. Stop strings are found in the
decoded text; while streaming, a suffix that could still become a stop string is held back, so a
client never sees part of a stop sequence. Only the loop thread touches the model and the cache;
adapter loads and unloads are commands it runs between steps, and an unloaded adapter is
dropped from the model only once no running sequence uses it.

Heavy imports (torch, peft) happen in the functions that use them.
"""
from __future__ import annotations

import queue
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from controller.errors import PermanentError

if TYPE_CHECKING:
    from controller.serve.model import EngineBase, RunFiles

BASE = "__base__"
"""peft's name for "no adapter" in a mixed batch."""


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0
    """0: greedy."""
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Finished:
    reason: str
    """'stop' (end of turn or a stop string) or 'length' (max_tokens or the context)."""
    prompt_tokens: int
    completion_tokens: int
    text: str
    """The whole answer (stop string excluded)."""


@dataclass(frozen=True)
class Failed:
    message: str


Event = Delta | Finished | Failed


class Sink(Protocol):
    """Where a sequence's events go (called from the loop thread)."""

    def __call__(self, event: Event) -> None: ...


class EngineFull(Exception):
    """More sequences wait than the engine queues; the caller answers 429."""


class AdapterError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Adapter:
    name: str
    run_id: str
    path: str


@dataclass
class _Sequence:
    prompt: list[int]
    adapter: str | None
    sampling: Sampling
    sink: Sink
    stream: bool
    ids: list[int] = field(default_factory=list)
    cached: int = 0
    """Tokens of this sequence in the KV cache (its next position id)."""
    sent: int = 0
    """Characters of the answer already handed out."""
    text: str = ""
    cancelled: bool = False
    done: bool = False
    generator: Any = None

    def cancel(self) -> None:
        self.cancelled = True


class Handle:
    """What `submit` returns: cancel it when the client goes away."""

    def __init__(self, seq: _Sequence, engine: "Engine") -> None:
        self._seq, self._engine = seq, engine

    def cancel(self) -> None:
        self._seq.cancel()
        self._engine._wake()


class Engine:
    """One base model, its adapters, and the loop that serves every request."""

    def __init__(self, base: "EngineBase", name: str, max_batch: int = 16, max_waiting: int = 256,
                 threads: int | None = None) -> None:
        self.base = base
        self.name = name
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.threads = threads
        self.model: Any = base.model
        self.adapters: dict[str, Adapter] = {}
        self._unloading: set[str] = set()
        self._waiting: "queue.Queue[_Sequence]" = queue.Queue()
        self._commands: "queue.Queue[Callable[[], None]]" = queue.Queue()
        self._active: list[_Sequence] = []
        self._cache: Any = None
        self._mask: Any = None
        self._wakeup = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._decode = base.tokenizer.backend_tokenizer.decode
        self._encode = base.tokenizer.backend_tokenizer.encode
        self.stats = {"steps": 0, "rows": 0, "prefills": 0, "generated": 0}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._loop, name="engine-loop", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _wake(self) -> None:
        self._wakeup.set()

    @property
    def max_model_len(self) -> int:
        return self.base.max_positions

    @property
    def running(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return self._waiting.qsize()

    # ------------------------------------------------------------------ requests
    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The chat template (the run's, from its manifest) applied to `messages`, tokenized as
        transformers' apply_chat_template does (the template writes the special tokens)."""
        text = self.base.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self._encode(text, add_special_tokens=False).ids)

    def submit(self, prompt: list[int], model: str | None, sampling: Sampling, sink: Sink, stream: bool) -> Handle:
        """Queue a sequence for `model` (the base's name or an adapter's). Raises AdapterError(404)
        for a model this engine does not serve, EngineFull when too many wait."""
        adapter = self.resolve(model)
        if self._waiting.qsize() >= self.max_waiting:
            raise EngineFull(f"{self._waiting.qsize()} requests are waiting for the engine; retry later")
        seq = _Sequence(prompt, adapter, sampling, sink, stream or bool(sampling.stop))
        if sampling.temperature > 0:
            import torch

            seq.generator = torch.Generator(device="cpu")
            seq.generator.manual_seed(sampling.seed if sampling.seed is not None else random.getrandbits(63))
        self._waiting.put(seq)
        self._wake()
        return Handle(seq, self)

    def resolve(self, model: str | None) -> str | None:
        """None for the base model, else the adapter's name."""
        if model in (None, self.name):
            return None
        if model in self.adapters and model not in self._unloading:
            return model
        raise AdapterError(404, f"The model `{model}` does not exist.")

    # ------------------------------------------------------------------ adapters
    def load_adapter(self, name: str, run: "RunFiles", timeout: float = 300) -> Adapter:
        """Load `run`'s LoRA adapter as `name` (between two steps of the loop)."""
        if name in self.adapters or name == self.name:
            raise AdapterError(400, f"The lora adapter '{name}' has already been loaded.")
        if not run.is_adapter:
            raise AdapterError(400, f"{run.run_dir} holds a full model, not a LoRA adapter; serve it as the base model")
        template = self.base.tokenizer.chat_template
        if run.chat_template != template:
            raise AdapterError(400, f"run {run.run_id} was trained with another chat template than this engine's; "
                                    "serve it on an engine of its own")
        adapter = Adapter(name, run.run_id, str(run.run_dir))
        self._call(lambda: self._load(adapter, run.model_dir), timeout)
        return adapter

    def unload_adapter(self, name: str, timeout: float = 300) -> None:
        if name not in self.adapters or name in self._unloading:
            raise AdapterError(404, f"The lora adapter '{name}' cannot be found.")
        self._unloading.add(name)  # no new request gets it; running ones finish first
        self._call(lambda: self._drop_unused(), timeout)

    def _call(self, fn: Callable[[], None], timeout: float) -> None:
        """Run `fn` on the loop thread and wait for it (its exception is raised here)."""
        done = threading.Event()
        failure: list[BaseException] = []

        def command() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                failure.append(exc)
            finally:
                done.set()

        self._commands.put(command)
        self._wake()
        if not done.wait(timeout):
            raise AdapterError(503, f"the engine did not run the adapter change within {timeout:.0f}s")
        if failure:
            exc = failure[0]
            if isinstance(exc, (AdapterError, PermanentError)):
                raise exc
            raise AdapterError(400, f"cannot load the adapter: {type(exc).__name__}: {exc}") from exc

    def _load(self, adapter: Adapter, model_dir: Path) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(model_dir), adapter_name=adapter.name, is_trainable=False)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(model_dir), adapter_name=adapter.name,
                                                   is_trainable=False)
        self.model.eval()
        self.adapters[adapter.name] = adapter

    def _drop_unused(self) -> None:
        in_use = {s.adapter for s in self._active} | {s.adapter for s in list(self._waiting.queue)}
        for name in sorted(self._unloading - in_use):
            self._unloading.discard(name)
            self.adapters.pop(name, None)
            if not self.adapters:
                # peft cannot run with no adapter at all: take its layers out (unmerged) instead.
                self.model = self.model.unload()
            else:
                self.model.delete_adapter(name)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        import torch

        torch.set_grad_enabled(False)
        if self.threads:
            # On a small shared CPU, torch's intra-op pool spinning against the HTTP threads costs
            # far more than it gives (measured: 10x per token with 2 threads on 2 busy cores).
            torch.set_num_threads(self.threads)
        while not self._stopped.is_set():
            self._run_commands()
            self._admit()
            if not self._active:
                if self._unloading:
                    self._drop_unused()
                self._wakeup.wait(0.5)
                self._wakeup.clear()
                continue
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - fail the batch, keep the loop
                self._fail_all(f"generation failed: {type(exc).__name__}: {exc}")
            if self._unloading:
                self._drop_unused()

    def _run_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            command()

    def _admit(self) -> None:
        while len(self._active) < self.max_batch:
            try:
                seq = self._waiting.get_nowait()
            except queue.Empty:
                return
            if seq.cancelled:
                continue
            if seq.adapter is not None and (seq.adapter not in self.adapters or seq.adapter in self._unloading):
                seq.sink(Failed(f"the adapter '{seq.adapter}' was unloaded"))
                continue
            try:
                self._prefill(seq)
            except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
                seq.sink(Failed(f"prefill failed: {type(exc).__name__}: {exc}"))

    def _forward(self, input_ids: Any, cache: Any, mask: Any, positions: Any, adapters: list[str | None]) -> Any:
        kwargs: dict[str, Any] = dict(input_ids=input_ids, cache=cache, attention_mask=mask, position_ids=positions,
                                      use_cache=True)
        if self.adapters:
            kwargs["adapter_names"] = [a or BASE for a in adapters]
        return self.model(**kwargs)

    def _prefill(self, seq: _Sequence) -> None:
        import torch
        import torch.nn.functional as F
        from transformers import DynamicCache

        device = self.base.device
        ids = torch.tensor([seq.prompt], device=device)
        out = self._forward(ids, DynamicCache(), None, None, [seq.adapter])
        self.stats["prefills"] += 1
        last = out.logits[:, -1, :]
        if not bool(torch.isfinite(last).all()):
            seq.sink(Failed(f"the model produced non-finite logits (adapter {seq.adapter or 'none'})"))
            return
        layers = [(layer.keys, layer.values) for layer in out.cache.layers]
        length = len(seq.prompt)
        mask = torch.ones(1, length, dtype=torch.long, device=device)
        if self._cache is None:
            merged, self._mask = layers, mask
        else:
            old = [(layer.keys, layer.values) for layer in self._cache.layers]
            width = max(self._mask.shape[1], length)
            pad_old, pad_new = width - self._mask.shape[1], width - length

            def left(t: Any, n: int) -> Any:
                return F.pad(t, (0, 0, n, 0)) if n else t

            merged = [(torch.cat([left(k, pad_old), left(nk, pad_new)]), torch.cat([left(v, pad_old), left(nv, pad_new)]))
                      for (k, v), (nk, nv) in zip(old, layers)]
            self._mask = torch.cat([F.pad(self._mask, (pad_old, 0)), F.pad(mask, (pad_new, 0))])
        self._cache = DynamicCache(ddp_cache_data=merged)
        self._active.append(seq)
        seq.cached = length
        self._advance(seq, self._sample(last, [seq])[0])
        self._retire()

    def _step(self) -> None:
        import torch

        device = self.base.device
        rows = self._active
        inputs = torch.tensor([[s.ids[-1]] for s in rows], device=device)
        positions = torch.tensor([[s.cached] for s in rows], device=device)
        self._mask = torch.cat([self._mask, torch.ones(len(rows), 1, dtype=self._mask.dtype, device=device)], dim=1)
        out = self._forward(inputs, self._cache, self._mask, positions, [s.adapter for s in rows])
        self._cache = out.cache
        self.stats["steps"] += 1
        self.stats["rows"] += len(rows)
        logits = out.logits[:, -1, :]
        finite = torch.isfinite(logits).all(dim=-1).tolist()
        tokens = self._sample(torch.nan_to_num(logits), rows)
        for seq, token, ok in zip(rows, tokens, finite):
            seq.cached += 1
            if not ok:  # a broken adapter (NaN weights): this request fails, the batch goes on
                seq.done = True
                seq.sink(Failed(f"the model produced non-finite logits (adapter {seq.adapter or 'none'})"))
                continue
            self._advance(seq, token)
        self._retire()

    def _sample(self, logits: Any, rows: list[_Sequence]) -> list[int]:
        import torch

        logits = logits.float()
        tokens = logits.argmax(dim=-1).tolist()
        for i, seq in enumerate(rows):
            s = seq.sampling
            if s.temperature <= 0:
                continue
            probs = torch.softmax(logits[i] / s.temperature, dim=-1)
            if s.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                keep = sorted_probs.cumsum(0) - sorted_probs < s.top_p  # the top token always stays
                sorted_probs = sorted_probs * keep
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
            tokens[i] = int(torch.multinomial(probs.cpu(), 1, generator=seq.generator).item())
        return tokens

    def _advance(self, seq: _Sequence, token: int) -> None:
        """One new token for `seq`: end of turn, a stop string, the length limit, or a delta."""
        if seq.cancelled:
            seq.done = True
            return
        if token in self.base.eos_ids:
            self._finish(seq, "stop")
            return
        seq.ids.append(token)
        self.stats["generated"] += 1
        if seq.stream:
            text = self._decode(seq.ids, skip_special_tokens=True)
            for stop in seq.sampling.stop:
                at = text.find(stop, max(0, seq.sent - len(stop)))
                if at >= 0:
                    seq.text = text[:at]
                    self._finish(seq, "stop")
                    return
            seq.text = text
            safe = len(text) - _held_back(text, seq.sampling.stop)
            if text.endswith("\ufffd"):  # half of a multi-byte character
                safe = min(safe, len(text.rstrip("\ufffd")))
            if safe > seq.sent:
                seq.sink(Delta(text[seq.sent:safe]))
                seq.sent = safe
        if len(seq.ids) >= seq.sampling.max_tokens or seq.cached + 1 >= self.max_model_len:
            self._finish(seq, "length")

    def _finish(self, seq: _Sequence, reason: str) -> None:
        if not seq.stream:
            seq.text = self._decode(seq.ids, skip_special_tokens=True)
        if seq.stream and len(seq.text) > seq.sent:
            seq.sink(Delta(seq.text[seq.sent:]))
            seq.sent = len(seq.text)
        seq.done = True
        seq.sink(Finished(reason, len(seq.prompt), len(seq.ids), seq.text))

    def _retire(self) -> None:
        """Drop finished and cancelled rows from the batch and the cache, then the padding
        columns no remaining row needs."""
        keep = [i for i, s in enumerate(self._active) if not (s.done or s.cancelled)]
        if len(keep) == len(self._active):
            return
        self._active = [self._active[i] for i in keep]
        if not keep:
            self._cache = self._mask = None
            return
        import torch
        from transformers import DynamicCache

        index = torch.tensor(keep, device=self.base.device)
        mask = self._mask.index_select(0, index)
        first = int((mask.sum(dim=0) > 0).nonzero()[0].item())
        self._mask = mask[:, first:]
        self._cache = DynamicCache(ddp_cache_data=[(layer.keys.index_select(0, index)[:, :, first:],
                                                    layer.values.index_select(0, index)[:, :, first:])
                                                   for layer in self._cache.layers])

    def _fail_all(self, message: str) -> None:
        for seq in self._active:
            if not seq.done:
                seq.done = True
                seq.sink(Failed(message))
        self._active = []
        self._cache = self._mask = None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that begins one of the stop strings."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
