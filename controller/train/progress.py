"""Progress for people and for machines: a tqdm bar with ETA on an interactive terminal,
one JSON object per line otherwise (what a log collector on Kubernetes wants)."""
from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


class Progress:
    def __init__(self, total: int, initial: int, *, stream: TextIO | None = None, interactive: bool | None = None,
                 every: int | None = None, enabled: bool = True) -> None:
        self.enabled = enabled  # only rank 0 reports in a multi-process run
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.total, self.initial = total, initial
        self.every = every or max(1, total // 50)
        self.started = time.monotonic()
        self.bar = None
        if self.interactive and enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=self.stream)

    def event(self, kind: str, **fields: Any) -> None:
        """A structured line (start, resume, checkpoint, preempted, done, ...)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(f"[ftops.train] {kind}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))
        else:
            print(json.dumps({"event": kind, "time": round(time.time(), 3), **fields}), file=sys.stdout, flush=True)

    def step(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['learningRate']:.2e}")
            return
        if step % self.every and step != self.total:
            return
        done = step - self.initial
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (self.total - step) if done else None
        self.event("step", totalSteps=self.total, etaSeconds=None if eta is None else round(eta, 1), **metrics)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
