"""The step rule: which TensorBoard step a source point gets.

TensorBoard keeps one point per step and a point at step s hides the tag's earlier points with
step >= s, so the steps we write for one (run, tag) must strictly increase in file order. Points are
written in the order the source's history lists them (MLflow: timestamp, step, value), and

    tb_step = source_step                      if it is greater than the previous tb_step,
              previous tb_step + 1             otherwise.

So a series whose source steps strictly increase keeps them exactly; a step-less series (MLflow
logs step 0) gets 0, 1, 2, ... (its point index); a repeated step or a step that goes back (resumed
training, a late point) is moved just past the previous point. Every source point stays visible
and no point already written is ever hidden. The wall time always stays the source's own.

TensorBoard steps are int64: `valid_step` tells a source step it can hold from a poison value, and
a step the rule moves past INT64_MAX cannot be written either.
"""

from __future__ import annotations

import math


def next_step(source_step: int, previous: int | None) -> int:
    """The TensorBoard step for the next point of a series whose last written step is `previous`."""
    if previous is None or source_step > previous:
        return source_step
    return previous + 1


INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def valid_step(value: object) -> int | None:
    """A source's step (an int, a float or a numeric string) as a step TensorBoard can hold, or
    None for a poison value: not a number (bools are not), NaN, infinite or outside int64. A
    finite fraction is truncated; integers and integer strings are taken exactly.

    The step rule itself can also leave int64 (`next_step` past INT64_MAX): check its result with
    `INT64_MIN <= step <= INT64_MAX` too."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value)
    if not isinstance(value, int):
        return None
    return value if INT64_MIN <= value <= INT64_MAX else None
