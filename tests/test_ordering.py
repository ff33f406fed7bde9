"""The order xdist's workers get the tests in (helpers/ordering.py): a permutation whose every
worksteal share starts with its long tests, modules with a shared module fixture kept whole."""

from __future__ import annotations

from helpers.ordering import spread

LONG = [
    "tests/test_hostile_sources.py::test_chaos",
    "tests/test_exactly_once.py::test_sigkill_at_each_protocol_step_loses_and_duplicates_nothing",
    "tests/test_disk_full.py::test_a_full_disk_heals_without_a_restart_and_loses_nothing[a]",
    "tests/test_disk_full.py::test_a_full_disk_heals_without_a_restart_and_loses_nothing[b]",
]
CONTAINER = ["tests/test_container.py::test_build", "tests/test_container.py::test_network"]


def test_each_share_starts_with_its_long_tests_longest_first() -> None:
    short = [f"tests/test_a.py::test_{i}" for i in range(30)]
    collected = [*short[:10], LONG[0], *CONTAINER, *short[10:20], *LONG[1:], *short[20:]]
    ordered = spread(collected, collected, 3)
    assert sorted(ordered) == sorted(collected)
    shares = [ordered[:12], ordered[12:24], ordered[24:]]  # worksteal cuts 36 tests 12, 12, 12
    assert shares[0][:2] == CONTAINER  # 100 s, moved as one unit
    # then each to the worker with the fewest seconds: 78 s, 71 s, 27 s (71 < 78), 27 s
    assert shares[1][:2] == [LONG[0], LONG[3]]
    assert shares[2][:2] == [LONG[1], LONG[2]]
    assert [t for t in ordered if t in short] == short  # the others keep their order


def test_without_long_tests_the_order_stays() -> None:
    collected = [f"tests/test_a.py::test_{i}" for i in range(7)]
    assert spread(collected, collected, 3) == collected
