"""Canary analysis (controller.serve.rollout), pure: the gateway's counters in, a decision out."""
from __future__ import annotations

from controller.serve.rollout import Policy, RunStats, analyse, canary_weight, merge, parse_metrics

PAGE = """# TYPE ftops_gateway_requests counter
ftops_gateway_requests_total{code="200",run_id="old"} 90.0
ftops_gateway_requests_total{code="502",run_id="old"} 1.0
ftops_gateway_requests_total{code="400",run_id="new"} 7.0
ftops_gateway_requests_total{code="200",run_id="new"} 27.0
ftops_gateway_requests_total{code="502",run_id="new"} 3.0
# TYPE ftops_gateway_request_seconds histogram
ftops_gateway_request_seconds_sum{run_id="old"} 9.1
ftops_gateway_request_seconds_count{run_id="old"} 91.0
ftops_gateway_request_seconds_sum{run_id="new"} 6.0
ftops_gateway_request_seconds_count{run_id="new"} 37.0
"""
POLICY = Policy(window_seconds=60, max_error_rate=0.05, min_errors=3, min_requests=20, max_latency_ratio=1.5)


def test_parse_counts_server_errors_and_ignores_client_errors():
    snap = parse_metrics(PAGE)
    assert snap["old"] == RunStats(91, 1, 9.1, 91)
    assert snap["new"] == RunStats(30, 3, 6.0, 37)  # the 7 client errors count for neither side
    assert merge(snap, snap)["new"].requests == 60


def test_errors_roll_back_at_once_without_waiting_out_the_window():
    base = {"new": RunStats(10, 0), "old": RunStats(10, 0)}
    now = {"new": RunStats(14, 4), "old": RunStats(40, 0)}
    verdict = analyse(base, now, "new", "old", elapsed=3, policy=POLICY)
    assert verdict.decision == "rollback" and verdict.canary == RunStats(4, 4) and "4 of 4" in verdict.message
    two = {"new": RunStats(12, 2), "old": RunStats(40, 0)}  # fewer than min_errors: keep watching
    assert analyse(base, two, "new", "old", elapsed=3, policy=POLICY).decision == "wait"


def test_a_healthy_canary_is_promoted_after_the_window():
    base: dict = {}
    now = {"new": RunStats(40, 1, 4.0, 40), "old": RunStats(120, 2, 11.0, 120)}
    assert analyse(base, now, "new", "old", elapsed=59, policy=POLICY).decision == "wait"
    verdict = analyse(base, now, "new", "old", elapsed=60, policy=POLICY)
    assert verdict.decision == "promote" and "2.5% errors" in verdict.message


def test_a_slow_or_erroring_canary_is_rolled_back_after_the_window():
    slow = {"new": RunStats(40, 0, 40 * 0.4, 40), "old": RunStats(120, 0, 120 * 0.1, 120)}
    verdict = analyse({}, slow, "new", "old", elapsed=61, policy=POLICY)
    assert verdict.decision == "rollback" and "4.00x" in verdict.message
    erroring = {"new": RunStats(100, 2, 10, 100), "old": RunStats(100, 0, 10, 100)}
    assert analyse({}, erroring, "new", "old", elapsed=61, policy=Policy(min_errors=50, max_error_rate=0.01)).decision \
        == "rollback"


def test_too_little_traffic_promotes_on_readiness_and_says_so():
    verdict = analyse({}, {"new": RunStats(3, 0)}, "new", "old", elapsed=120, policy=POLICY)
    assert verdict.decision == "promote" and "fewer than 20" in verdict.message


def test_canary_weights():
    assert canary_weight(25) == (75, 25)
    assert canary_weight(0) == (99, 1) and canary_weight(100) == (1, 99)
