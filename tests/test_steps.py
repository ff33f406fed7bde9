"""The step rule (tbmirror.mirror.steps)."""

from __future__ import annotations

from tbmirror.mirror.steps import next_step


def steps_for(source_steps: list[int]) -> list[int]:
    written: list[int] = []
    for step in source_steps:
        written.append(next_step(step, written[-1] if written else None))
    return written


def test_strictly_increasing_steps_are_kept() -> None:
    assert steps_for([0, 1, 5, 100]) == [0, 1, 5, 100]
    assert steps_for([-5, -2, 0]) == [-5, -2, 0]


def test_stepless_series_get_their_index() -> None:
    assert steps_for([0] * 5) == [0, 1, 2, 3, 4]


def test_repeated_and_backward_steps_move_just_past_the_previous_point() -> None:
    assert steps_for([0, 0, 1, 1, 2]) == [0, 1, 2, 3, 4]
    assert steps_for([0, 1, 2, 3, 1, 2, 10]) == [0, 1, 2, 3, 4, 5, 10]
