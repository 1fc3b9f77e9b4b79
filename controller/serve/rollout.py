"""Canary analysis on the gateway's own metrics (pure): promote, roll back, or keep watching.

The gateway splits a spec's traffic between the stable run and the canary by weight, and counts
every chat request per run and status (`ftops_gateway_requests_total{run_id, code}`) and its
latency (`ftops_gateway_request_seconds{run_id}`). The deployer scrapes that page when a canary
starts (the baseline) and on every later reconcile pass, and `analyse` compares the canary's
requests since the baseline with the stable run's over the same window:

* the canary's error rate (5xx: the engine failed, or no replica holds its adapter) above
  `max_error_rate`, with at least `min_errors` errors -> roll back at once (no need to wait out
  the window while users get errors; the gateway already retried those requests on the stable run);
* after `window_seconds`, with at least `min_requests` canary requests: its error rate within the
  limit and its mean latency at most `max_latency_ratio` times the stable run's -> promote;
  otherwise roll back;
* after the window with too few canary requests to judge: promote on readiness alone, and say so
  (no traffic is no evidence either way; holding the old version forever would block every change).

Client errors (4xx) are the caller's mistakes and count for neither side.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Decision = Literal["promote", "rollback", "wait"]


@dataclass(frozen=True)
class RunStats:
    """Cumulative counters of one run at the gateway."""

    requests: float = 0.0
    errors: float = 0.0
    latency_sum: float = 0.0
    latency_count: float = 0.0

    def minus(self, earlier: "RunStats") -> "RunStats":
        return RunStats(self.requests - earlier.requests, self.errors - earlier.errors,
                        self.latency_sum - earlier.latency_sum, self.latency_count - earlier.latency_count)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests > 0 else 0.0

    @property
    def mean_latency(self) -> float | None:
        return self.latency_sum / self.latency_count if self.latency_count > 0 else None

    def to_json(self) -> dict[str, float]:
        return {"requests": self.requests, "errors": self.errors, "latencySum": self.latency_sum,
                "latencyCount": self.latency_count}

    @classmethod
    def from_json(cls, data: dict) -> "RunStats":
        return cls(float(data.get("requests", 0)), float(data.get("errors", 0)), float(data.get("latencySum", 0)),
                   float(data.get("latencyCount", 0)))


Snapshot = dict[str, RunStats]
"""run id -> its counters, summed over every gateway replica scraped."""


@dataclass(frozen=True)
class Policy:
    window_seconds: float = 60.0
    """How long the canary is watched (spec.serving.rollout.stableSeconds)."""
    max_error_rate: float = 0.05
    min_errors: int = 3
    min_requests: int = 20
    max_latency_ratio: float = 1.5


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    message: str
    canary: RunStats
    stable: RunStats


def parse_metrics(text: str) -> Snapshot:
    """The per-run counters from a gateway's /metrics page (Prometheus text format)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            run = sample.labels.get("run_id")
            if run is None:
                continue
            stats = out.setdefault(run, {"requests": 0.0, "errors": 0.0, "latency_sum": 0.0, "latency_count": 0.0})
            if sample.name == "ftops_gateway_requests_total":
                code = int(sample.labels.get("code", "0") or 0)
                if code < 400 or code >= 500:  # 4xx: the client's mistake, neither run's
                    stats["requests"] += sample.value
                if code >= 500:
                    stats["errors"] += sample.value
            elif sample.name == "ftops_gateway_request_seconds_sum":
                stats["latency_sum"] += sample.value
            elif sample.name == "ftops_gateway_request_seconds_count":
                stats["latency_count"] += sample.value
    return {run: RunStats(s["requests"], s["errors"], s["latency_sum"], s["latency_count"]) for run, s in out.items()}


def merge(*snapshots: Snapshot) -> Snapshot:
    """Several gateway replicas' counters added up."""
    total: dict[str, RunStats] = {}
    for snap in snapshots:
        for run, s in snap.items():
            t = total.get(run, RunStats())
            total[run] = RunStats(t.requests + s.requests, t.errors + s.errors, t.latency_sum + s.latency_sum,
                                  t.latency_count + s.latency_count)
    return total


def analyse(baseline: Snapshot, now: Snapshot, canary: str, stable: str, elapsed: float, policy: Policy) -> Verdict:
    c = now.get(canary, RunStats()).minus(baseline.get(canary, RunStats()))
    s = now.get(stable, RunStats()).minus(baseline.get(stable, RunStats()))
    if c.errors >= policy.min_errors and c.error_rate > policy.max_error_rate:
        return Verdict("rollback", f"the canary failed {c.errors:.0f} of {c.requests:.0f} requests "
                                   f"({c.error_rate:.0%} > {policy.max_error_rate:.0%})", c, s)
    if elapsed < policy.window_seconds:
        return Verdict("wait", f"watching the canary: {c.requests:.0f} requests, {c.errors:.0f} errors after "
                               f"{elapsed:.0f}s of {policy.window_seconds:.0f}s", c, s)
    if c.requests < policy.min_requests:
        return Verdict("promote", f"only {c.requests:.0f} canary requests in {elapsed:.0f}s (fewer than "
                                  f"{policy.min_requests} to judge by); promoted on readiness", c, s)
    if c.error_rate > policy.max_error_rate:
        return Verdict("rollback", f"the canary's error rate {c.error_rate:.1%} > {policy.max_error_rate:.0%} "
                                   f"over {c.requests:.0f} requests", c, s)
    cl, sl = c.mean_latency, s.mean_latency
    if cl is not None and sl is not None and sl > 0 and cl > policy.max_latency_ratio * sl:
        return Verdict("rollback", f"the canary's mean latency {cl * 1000:.0f} ms is {cl / sl:.2f}x the stable run's "
                                   f"{sl * 1000:.0f} ms (limit {policy.max_latency_ratio:g}x)", c, s)
    latency = f", mean latency {cl * 1000:.0f} ms vs {sl * 1000:.0f} ms" if cl is not None and sl is not None else ""
    return Verdict("promote", f"the canary answered {c.requests:.0f} requests with {c.error_rate:.1%} errors"
                              f"{latency} over {elapsed:.0f}s", c, s)


def canary_weight(percent: int) -> tuple[int, int]:
    """(stable, canary) route weights for spec.serving.rollout.canaryPercent."""
    percent = max(1, min(99, int(percent)))
    return 100 - percent, percent
