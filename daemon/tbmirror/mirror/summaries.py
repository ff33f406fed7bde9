"""Serialized `Event` protos for what tbmirror writes: scalars, images, text, HParams sessions; and
the scalars of a run directory read back.

Everything is built with TensorBoard's own protos and plugin metadata helpers (no TensorFlow).
Each encoding function returns the payload bytes of one record.

TensorBoard's protos (protobuf), numpy, PIL and TensorBoard's plugin helpers (which bring its
TensorFlow stub and absl) are imported inside the functions that use them, so a command that
writes nothing (a sync with nothing new) does not pay for them.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

from tbmirror.mirror import events

FILE_VERSION = "brain.Event:2"
MAX_TAG_BYTES = 1000
IMAGE_FORMATS = frozenset({"PNG", "JPEG", "GIF"})  # what TensorBoard's images dashboard shows
MAX_IMAGE_PIXELS = 25_000_000  # decoded to check it: at most ~100 MB of RGBA in memory

ParamValue = bool | float | str

# MLflow run status -> the name of an HParams session status (api_pb2.Status).
SESSION_STATUS = {
    "FINISHED": "STATUS_SUCCESS",
    "FAILED": "STATUS_FAILURE",
    "KILLED": "STATUS_FAILURE",
}


def clean_tag(tag: str) -> str:
    """A tag TensorBoard can always parse: valid UTF-8 and at most MAX_TAG_BYTES bytes."""
    encoded = tag.encode("utf-8", errors="replace")[:MAX_TAG_BYTES]
    return encoded.decode("utf-8", errors="ignore")


def file_version(wall_time: float) -> bytes:
    """The first record of every events file."""
    from tensorboard.compat.proto.event_pb2 import Event

    return Event(wall_time=wall_time, file_version=FILE_VERSION).SerializeToString()


class ScalarEncoder:
    """Serializes scalar points of one tag as `simple_value` events (reuses one message: fast)."""

    def __init__(self, tag: str) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._event = Event(summary=Summary(value=[Summary.Value(tag=clean_tag(tag))]))
        self._value = self._event.summary.value[0]

    def encode(self, wall_time: float, step: int, value: float) -> bytes:
        self._event.wall_time = wall_time
        self._event.step = step
        self._value.simple_value = value
        return self._event.SerializeToString()


def text(tag: str, markdown: str, wall_time: float, step: int) -> bytes:
    """A text-plugin summary holding `markdown`."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.plugins.text.summary_v2 import text_pb

    summary = text_pb(clean_tag(tag), markdown)
    return Event(wall_time=wall_time, step=step, summary=summary).SerializeToString()


class BadImageError(ValueError):
    """Bytes that are not a whole, decodable PNG, JPEG or GIF image."""


def image(tag: str, data: bytes, wall_time: float, step: int) -> bytes:
    """An images-plugin summary of one encoded image, stored as given (TensorBoard serves these
    very bytes). Raises BadImageError unless `data` decodes fully as PNG, JPEG or GIF."""
    from PIL import Image
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.image import metadata as image_metadata
    from tensorboard.util import tensor_util

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as checked:
                kind, (width, height) = checked.format, checked.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise ValueError(f"{width}x{height} pixels, more than {MAX_IMAGE_PIXELS:,}")
                checked.verify()  # the file's structure (PNG: every chunk's CRC)
            with Image.open(io.BytesIO(data)) as decoded:
                decoded.load()  # every pixel: a truncated or corrupt file fails here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:  # fmt: skip
        reason = str(error).split(" <")[0]  # without the object's repr
        raise BadImageError(f"not a readable image ({type(error).__name__}: {reason})") from None
    if kind not in IMAGE_FORMATS:
        raise BadImageError(f"a {kind} image (TensorBoard shows PNG, JPEG and GIF)")
    tensor = tensor_util.make_tensor_proto(
        [str(width).encode(), str(height).encode(), data], dtype="string"
    )
    tag = clean_tag(tag)
    metadata = image_metadata.create_summary_metadata(display_name=tag, description="")
    value = Summary.Value(tag=tag, metadata=metadata, tensor=tensor)
    return Event(wall_time=wall_time, step=step, summary=Summary(value=[value])).SerializeToString()


def coerce_param(value: str) -> ParamValue:
    """MLflow stores params as strings; show finite numbers as numbers and true/false as bools."""
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        number = float(value)
    except ValueError:
        return value
    return number if math.isfinite(number) else value


def session_start(
    params: dict[str, str], trial_id: str, start_time_secs: float, wall_time: float
) -> bytes:
    """An HParams session start (one per run directory), with `params` coerced."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.plugins.hparams.summary_v2 import hparams_pb

    values = {clean_tag(name): coerce_param(value) for name, value in params.items()}
    summary = hparams_pb(values, trial_id=trial_id, start_time_secs=start_time_secs)
    return Event(wall_time=wall_time, summary=summary).SerializeToString()


def session_end(status: str, end_time_secs: float, wall_time: float) -> bytes:
    """An HParams session end for a finished MLflow `status` (a key of SESSION_STATUS)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from tensorboard.plugins.hparams import metadata as hparams_metadata

    plugin_data = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(
            status=api_pb2.Status.Value(SESSION_STATUS[status]), end_time_secs=end_time_secs
        )
    )
    summary = Summary(
        value=[
            Summary.Value(
                tag=hparams_metadata.SESSION_END_INFO_TAG,
                metadata=hparams_metadata.create_summary_metadata(plugin_data),
                tensor=hparams_metadata.NULL_TENSOR,
            )
        ]
    )
    return Event(wall_time=wall_time, summary=summary).SerializeToString()


def float32_bits(value: float) -> bytes:
    """A value as TensorBoard stores it (float32), as bytes: NaN-safe for matching."""
    import numpy as np

    with np.errstate(over="ignore"):
        single = np.float32(value)
    return (np.float32(np.nan) if np.isnan(single) else single).tobytes()


def iter_scalars(directory: Path, tag: str) -> Iterator[tuple[float, float]]:
    """(wall_time, value) of every `tag` scalar in the events files of a run directory, in
    file-name order, read a chunk at a time."""
    from tensorboard.compat.proto.event_pb2 import Event

    if not directory.is_dir():
        return
    paths = sorted(p for p in directory.iterdir() if p.is_file() and "tfevents" in p.name)
    wanted = clean_tag(tag)
    for path in paths:
        for record in events.iter_file_records(path):
            event = Event.FromString(record.payload)
            for value in event.summary.value:
                if value.tag == wanted and value.WhichOneof("value") == "simple_value":
                    yield event.wall_time, value.simple_value
