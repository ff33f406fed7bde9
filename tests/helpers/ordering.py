"""The order xdist's workers get the tests in: the long ones first, spread over the workers.

`--dist worksteal` (pyproject) hands each worker one contiguous share of the collection and then
lets an idle worker steal the back half of the longest queue. A long test sitting late in a share
can start near the end and keep one worker busy alone while the others idle. So each share here
starts with its part of the known-long tests (longest-processing-time first), and the rest keep
their collection order. Tests that share a module-scoped fixture move as one unit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeVar

# Worker-seconds (setup included) of the longest tests on 2 idle CPUs with 3 workers (the
# suite's `--durations` of 2026-12-07, less what that day's changes took off). A key is a test's
# node id without "tests/" and its parameters, or a module whose tests share a module-scoped
# fixture (they move together).
# Estimates only decide where a test starts: a stale or missing entry costs time, not results.
# (Left out: long tests whose session fixture their module-mates share, e.g. Azurite's, where
# moving one away would start that fixture on one more worker.)
LONG_TESTS = {
    "test_container.py": 100,  # the image build (a module fixture), then two runs of it
    "test_hostile_sources.py::test_chaos": 78,
    "test_exactly_once.py::test_sigkill_at_each_protocol_step_loses_and_duplicates_nothing": 71,
    "test_daemon.py::test_live_points_and_a_hung_or_killed_tensorboard_comes_back_with_backoff": 42,
    "test_monitoring.py::test_alerts_reach_the_webhook_and_resolve_and_every_advertised_metric_is_real": 35,  # noqa: E501
    "test_demo.py::test_demo_shows_the_sweep_and_a_live_run_and_stops_cleanly": 31,
    "test_disk_full.py::test_a_full_disk_heals_without_a_restart_and_loses_nothing": 27,
    "test_promises.py::test_a_slow_source_is_never_polled_twice_at_once_nor_in_a_burst_after": 25,
    "test_proxy_browser.py::test_a_browser_signs_in_and_sees_the_runs_on_the_scalars_dashboard": 23,
    "test_daemon.py::test_an_mlflow_outage_degrades_health_and_loses_nothing": 22,
    "test_hostile_sources.py::test_a_repeated_history_page_token_ends_the_pass_within_memory": 22,
    "test_config_watch.py::test_the_daemon_reloads_a_swapped_configmap_as_on_sighup": 19,
    "test_auth.py::test_basic_auth_right_wrong_and_from_a_file": 18,
    "test_uploads.py::test_a_live_writer_is_mirrored_through_a_daemon_restart": 18,
    "test_retention.py::test_prune_removes_exactly_what_its_dry_run_lists_and_leaves_store_and_tree_agreeing": 15,  # noqa: E501
    "test_uploads.py::test_sigkill_at_each_protocol_step_copies_and_converts_exactly_once": 15,
}

T = TypeVar("T")


def estimate(nodeid: str) -> tuple[str, float] | None:
    """(unit, worker-seconds) of a known-long test; its unit is its module if the module is
    listed whole, else the test itself. None for the others."""
    test = re.sub(r"\[.*\]$", "", nodeid.removeprefix("tests/"))
    module = test.split("::", 1)[0]
    if module in LONG_TESTS:
        return module, LONG_TESTS[module]
    if test in LONG_TESTS:
        return nodeid, LONG_TESTS[test]
    return None


def spread(items: Sequence[T], nodeids: Sequence[str], workers: int) -> list[T]:
    """`items` (with their `nodeids`) reordered for `workers` worksteal workers: share i (the
    sizes worksteal cuts) starts with the long units given to worker i, longest first, each to
    the worker with the fewest seconds so far; the other tests follow in their order."""
    units: dict[str, list[T]] = {}
    seconds: dict[str, float] = {}
    rest: list[T] = []
    for item, nodeid in zip(items, nodeids, strict=True):
        known = estimate(nodeid)
        if known is None:
            rest.append(item)
        else:
            units.setdefault(known[0], []).append(item)
            seconds[known[0]] = known[1]
    load, heads = [0.0] * workers, [list[T]() for _ in range(workers)]
    for unit in sorted(units, key=lambda u: -seconds[u]):
        worker = load.index(min(load))
        heads[worker] += units[unit]
        load[worker] += seconds[unit]
    ordered: list[T] = []
    remaining = len(items)
    for worker, head in enumerate(heads):
        size = remaining // (workers - worker)  # worksteal's first cut (check_schedule)
        fill = max(0, size - len(head))
        ordered += head + rest[:fill]
        del rest[:fill]
        remaining -= len(head) + fill
    return ordered + rest
