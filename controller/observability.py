"""Prometheus metrics and structured JSON logs for the controller.

Metrics live in their own registry (not the process-global one) so tests and several
controllers in one process never share counters.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

from controller.status import SpecStatus


class JsonFormatter(logging.Formatter):
    """One JSON object per line. A message that is itself JSON is merged into the record."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        message = record.getMessage()
        try:
            parsed = json.loads(message)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            payload.update(parsed)
        else:
            payload["message"] = message
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("ftops")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class Metrics:
    """reconcile duration, runs by state, gate outcomes, queue depth."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.reconcile_seconds = Histogram(
            "ftops_reconcile_duration_seconds", "Duration of one reconcile pass", registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300),
        )
        self.passes = Counter("ftops_reconcile_passes_total", "Reconcile passes by result", ["result"], registry=self.registry)
        self.specs_by_phase = Gauge("ftops_specs", "Specs by phase", ["phase"], registry=self.registry)
        self.runs_by_state = Gauge("ftops_runs", "Training runs by state", ["state"], registry=self.registry)
        self.gate_outcomes = Counter("ftops_gate_decisions_total", "Gate decisions", ["outcome"], registry=self.registry)
        self.queue_depth = Gauge("ftops_queue_depth", "Specs waiting for a requeue", registry=self.registry)

    def gate_outcome(self, passed: bool) -> None:
        self.gate_outcomes.labels("passed" if passed else "failed").inc()

    def observe_pass(self, seconds: float, statuses: dict[str, SpecStatus], error: str | None, requeued: int) -> None:
        self.reconcile_seconds.observe(seconds)
        self.passes.labels("error" if error else "ok").inc()
        phases: dict[str, int] = {}
        runs: dict[str, int] = {}
        for status in statuses.values():
            phases[status.phase] = phases.get(status.phase, 0) + 1
            trained = status.condition("Trained")
            if trained is not None:
                runs[trained.reason] = runs.get(trained.reason, 0) + 1
        self.specs_by_phase.clear()
        for phase, count in phases.items():
            self.specs_by_phase.labels(phase).set(count)
        self.runs_by_state.clear()
        for state, count in runs.items():
            self.runs_by_state.labels(state).set(count)
        self.queue_depth.set(requeued)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "127.0.0.1"):
        """Serve /metrics on a background thread; returns the server (call .shutdown())."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
