"""A training job that logs scalars to a tfevents file: `python tfevents_writer.py WRITER LOGDIR
START COUNT INTERVAL`. WRITER is `tensorboardx` (SummaryWriter) or `tensorboard` (TensorBoard's own
EventFileWriter). Point i has step i, tag `loss`, value i / 7; each point is flushed right away."""

from __future__ import annotations

import sys
import time


def main() -> None:
    writer_name, logdir, start, count, interval = sys.argv[1:6]
    first, last = int(start), int(start) + int(count)
    if writer_name == "tensorboardx":
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(logdir, flush_secs=1)
        for step in range(first, last):
            writer.add_scalar("loss", step / 7, step)
            writer.flush()
            time.sleep(float(interval))
        writer.close()
    else:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        events = EventFileWriter(logdir)
        for step in range(first, last):
            value = Summary.Value(tag="loss", simple_value=step / 7)
            events.add_event(
                Event(wall_time=time.time(), step=step, summary=Summary(value=[value]))
            )
            events.flush()
            time.sleep(float(interval))
        events.close()


if __name__ == "__main__":
    main()
