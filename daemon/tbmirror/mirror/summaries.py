"""Serialized `Event` protos for what tbmirror writes: scalars, images, text, HParams sessions; and
the scalars of a run directory read back.

Everything is built with TensorBoard's own protos (no TensorFlow); text and HParams summaries as
TensorBoard's `text_pb` and `hparams_pb` build them (byte for byte, but for the order of a map's
entries, which protobuf does not fix), without those helpers: they import numpy and absl (~13 MB
of a first sync's peak). Each encoding function returns the payload bytes of one record.

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
from typing import TYPE_CHECKING

from tbmirror.mirror import events

if TYPE_CHECKING:
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

FILE_VERSION = "brain.Event:2"
MAX_TAG_BYTES = 1000
IMAGE_FORMATS = frozenset({"PNG", "JPEG", "GIF"})  # what TensorBoard's images dashboard shows
MAX_IMAGE_PIXELS = 25_000_000  # decoded to check it: at most ~100 MB of RGBA in memory

ParamValue = bool | float | str
SESSION_START_TAG = "_hparams_/session_start_info"  # (TensorBoard's hparams.metadata)
SESSION_END_TAG = "_hparams_/session_end_info"

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
    """A text-plugin summary holding `markdown` (what TensorBoard's `text_pb` builds, without the
    numpy it imports)."""
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.compat.proto.types_pb2 import DT_STRING
    from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData

    content = TextPluginData(version=0).SerializeToString()
    scalar = TensorShapeProto()
    tensor = TensorProto(dtype=DT_STRING, tensor_shape=scalar, string_val=[markdown.encode()])
    return _plugin_event(clean_tag(tag), "text", content, tensor, wall_time, step)


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
    """An HParams session start (one per run directory), with `params` coerced: what
    TensorBoard's `hparams_pb` builds (without the numpy and absl it imports)."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    values = {clean_tag(name): coerce_param(value) for name, value in params.items()}
    info = plugin_data_pb2.SessionStartInfo(group_name=trial_id, start_time_secs=start_time_secs)
    for name in sorted(values):
        value = values[name]
        if isinstance(value, bool):
            info.hparams[name].bool_value = value
        elif isinstance(value, float):
            info.hparams[name].number_value = value
        else:
            info.hparams[name].string_value = value
    data = plugin_data_pb2.HParamsPluginData(session_start_info=info)
    return _hparams_event(SESSION_START_TAG, data, wall_time)


def session_end(status: str, end_time_secs: float, wall_time: float) -> bytes:
    """An HParams session end for a finished MLflow `status` (a key of SESSION_STATUS)."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(
            status=api_pb2.Status.Value(SESSION_STATUS[status]), end_time_secs=end_time_secs
        )
    )
    return _hparams_event(SESSION_END_TAG, data, wall_time)


def _hparams_event(tag: str, data: HParamsPluginData, wall_time: float) -> bytes:
    """An event of one HParams summary: `data` (version 0) as the plugin's content, with the
    empty float tensor TensorBoard's HParams helpers write."""
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.compat.proto.types_pb2 import DT_FLOAT

    data.version = 0
    shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=0)])
    empty = TensorProto(dtype=DT_FLOAT, tensor_shape=shape)
    return _plugin_event(tag, "hparams", data.SerializeToString(), empty, wall_time)


def _plugin_event(
    tag: str, plugin: str, content: bytes, tensor: TensorProto, wall_time: float, step: int = 0
) -> bytes:
    """An event of one summary value: `tensor`, for `plugin` (its plugin data `content`)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata

    data = SummaryMetadata.PluginData(plugin_name=plugin, content=content)
    value = Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=data), tensor=tensor)
    return Event(wall_time=wall_time, step=step, summary=Summary(value=[value])).SerializeToString()


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
