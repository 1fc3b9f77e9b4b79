"""The `Generate` function the suites share: every model, served or bare, each answer once.

`Answers(model pool, served setup, ...)` is called by the suites as `generate(model, examples,
served=...)`. It renders the served prompts (retrieval + prompt builder + context fitting,
controller.evaluate.served) once per example, so every model in the A/B comparison sees exactly
the same inputs; it remembers each answer by (model, served, example), so the fine-tune's answers
on the test split are generated once for task accuracy, format, RAG metrics and the A/B.

`ModelPool` holds at most one model in memory (one GPU may not hold two): the fine-tune; its
base (for an adapter, the same weights with the adapter switched off, so nothing reloads; for a
full fine-tune, the base loaded after the fine-tune is freed); a local reference model; or none,
for a reference endpoint. The suites run in an order that loads each model once
(controller.evaluate.run).
"""
from __future__ import annotations

import gc
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ContextManager, Mapping, Sequence

from controller.evaluate.datasets import EvalExample
from controller.evaluate.generation import LoadedModel, answer_token_budget, generate
from controller.evaluate.served import ServedSetup
from controller.evaluate.suite import BASE, FINE_TUNED, Answer


def free_memory() -> None:
    """Release a model's memory before the next one loads (one GPU may not hold two)."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class ModelPool:
    """Loads the model a generation needs, keeping at most one in memory."""

    def __init__(self, run_dir: Path, device: str, local_refs: Mapping[str, Path], endpoints: Mapping[str, Any],
                 batch_size: int, seed: int, progress: bool | None) -> None:
        self.run_dir = run_dir
        self.device = device
        self.local_refs = dict(local_refs)
        self.endpoints = dict(endpoints)
        self.batch_size, self.seed, self.progress = batch_size, seed, progress
        self.adapter = (run_dir / "model" / "adapter_config.json").is_file()
        self._loaded: tuple[str, LoadedModel] | None = None

    def names(self) -> list[str]:
        return [FINE_TUNED, BASE, *self.endpoints, *self.local_refs]

    def _model(self, name: str) -> tuple[LoadedModel, ContextManager[Any]]:
        from controller.evaluate.generation import load_base_model, load_local_model, load_run_model

        # An adapter's base is the fine-tune with its adapter switched off.
        holder = FINE_TUNED if name == BASE and self.adapter else name
        if self._loaded is None or self._loaded[0] != holder:
            self.close()
            if holder == FINE_TUNED:
                loaded = load_run_model(self.run_dir, self.device)
            elif holder == BASE:
                loaded = load_base_model(self.run_dir, self.device)
            else:
                loaded = load_local_model(self.local_refs[holder], holder, self.device)
            self._loaded = (holder, loaded)
        model = self._loaded[1]
        if name == BASE and self.adapter:
            return model, model.model.disable_adapter()
        return model, nullcontext()

    def generate(self, name: str, conversations: Sequence[Sequence[dict]], max_new_tokens: int, desc: str) -> list[str]:
        if name in self.endpoints:
            return list(self.endpoints[name].generate(conversations, max_new_tokens=max_new_tokens, seed=self.seed,
                                                      progress=self.progress))
        model, context = self._model(name)
        with context:
            return generate(model, conversations, max_new_tokens=max_new_tokens, batch_size=self.batch_size,
                            seed=self.seed, progress=self.progress, desc=desc)

    def close(self) -> None:
        if self._loaded is not None:
            self._loaded = None
            free_memory()


class Answers:
    """The suites' Generate: `answers(model, examples, served=True)`."""

    def __init__(self, pool: ModelPool, served: ServedSetup | None, tokenizer: Any, context: int,
                 max_new_tokens: int | None) -> None:
        self.pool = pool
        self.served = served
        self.tokenizer = tokenizer
        self.context = context
        self.override = max_new_tokens
        self._prompts: dict[int, tuple[list[dict], Answer]] = {}
        self._answers: dict[tuple[str, bool, int], Answer] = {}
        self._keep: list[EvalExample] = []  # examples keyed by id() stay alive while cached

    def budget(self, examples: Sequence[EvalExample], served: bool) -> int:
        """max_new_tokens: the override, else the serving block's maxTokens for the served system
        (what a request gets by default), else 1.5x the longest reference answer + 8."""
        if self.override:
            return self.override
        if served and self.served is not None:
            return self.served.max_tokens
        return answer_token_budget(self.tokenizer, [e.reference for e in examples])

    def _count(self, messages: list[dict]) -> int:
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return len(ids)

    def prompt(self, example: EvalExample, served: bool) -> tuple[list[dict], Answer]:
        if not served or self.served is None:
            return example.messages, Answer("")
        key = id(example)
        if key not in self._prompts:
            self._prompts[key] = self.served.prompt(example, self._count, self.context)
            self._keep.append(example)
        return self._prompts[key]

    def __call__(self, model: str, examples: Sequence[EvalExample], *, served: bool = True) -> list[Answer]:
        served = served and self.served is not None
        todo: list[EvalExample] = []
        queued: set[int] = set()
        for e in examples:
            if (model, served, id(e)) not in self._answers and id(e) not in queued:
                todo.append(e)
                queued.add(id(e))
        if todo:
            prompts = [self.prompt(e, served) for e in todo]
            runnable = [i for i, (messages, _) in enumerate(prompts) if messages]
            outputs = self.pool.generate(model, [prompts[i][0] for i in runnable], self.budget(todo, served),
                                         f"{model}: {'served' if served else 'bare'}") if runnable else []
            text = dict(zip(runnable, outputs))
            for i, e in enumerate(todo):
                shell = prompts[i][1]
                self._answers[(model, served, id(e))] = Answer(text.get(i, ""), shell.sources, shell.retrieved)
                self._keep.append(e)
        return [self._answers[(model, served, id(e))] for e in examples]
