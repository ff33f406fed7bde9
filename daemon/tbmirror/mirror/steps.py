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
"""

from __future__ import annotations


def next_step(source_step: int, previous: int | None) -> int:
    """The TensorBoard step for the next point of a series whose last written step is `previous`."""
    if previous is None or source_step > previous:
        return source_step
    return previous + 1
