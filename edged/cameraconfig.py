"""A camera's configuration: its source (file, stream or device), how it is read, and
the areas of its picture where no object is reported (``object_masks``)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgefed.config import Seconds

Share = Annotated[float, Field(ge=0, le=1)]
# a polygon of (x, y) points in shares of the frame's width and height
MaskPolygon = Annotated[list[tuple[Share, Share]], Field(min_length=3)]

_STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
_URL_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://).*@")  # to the last "@" anywhere


class SourceKind(StrEnum):
    FILE = "file"
    STREAM = "stream"
    DEVICE = "device"


def source_kind(source: str | int) -> SourceKind:
    """File path, network stream URL or V4L2 device (index or /dev/video*)."""
    if isinstance(source, int) or source.startswith("/dev/video"):
        return SourceKind.DEVICE
    scheme, sep, _ = source.partition("://")
    if sep and scheme.lower() in _STREAM_SCHEMES:
        return SourceKind.STREAM
    return SourceKind.FILE


def redact_source(source: str | int) -> str:
    """rtsp://admin:pw@cam/x -> rtsp://cam/x: an "@" in a path costs the host, not a leak."""
    return _URL_USERINFO.sub(r"\1", str(source), count=1)


class CameraConfig(BaseModel):
    """One camera source."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Camera name in results"
    )
    source: int | str = Field(
        description="Video file path, stream URL (rtsp://, http://, ...) or V4L2 device "
        "(index such as 0, or /dev/videoN)"
    )
    loop: bool = Field(False, description="Files only: rewind at the end instead of ending")
    pace: Literal["native", "fast"] = Field(
        "native",
        description="Files only: 'native' delivers frames at the file's fps, 'fast' as fast as "
        "they decode (live sources always arrive at their own rate)",
    )
    ring_size: int = Field(4, ge=1, le=256, description="Frames buffered before the oldest drops")
    reconnect_initial_s: Seconds = Field(
        0.5, description="First wait before reopening a lost stream or device"
    )
    reconnect_max_s: Seconds = Field(
        30.0, description="Cap of the doubling wait between reopen attempts"
    )
    reconnect_jitter: float = Field(
        0.2, ge=0, le=1, description="Random share (+/-) applied to each reconnect wait"
    )
    io_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="Streams: open and read timeout before a reconnect"
    )
    object_masks: list[MaskPolygon] = Field(
        default_factory=list,
        description="Areas where no object is reported: polygons of at least 3 [x, y] points "
        "as shares (0-1) of the frame's width and height. A detection whose foot point (the "
        "middle of its box's bottom edge) lies inside one is dropped before tracking: a "
        "poster, a mannequin, clothes that the detector takes for a person",
    )

    @field_validator("source", mode="before")
    @classmethod
    def _digits_are_devices(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("source must be a path, URL or device index, not a boolean")
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        if isinstance(value, str) and not value.strip():
            raise ValueError("source must not be empty")
        if isinstance(value, int) and value < 0:
            raise ValueError(f"device index must be >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> CameraConfig:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")
        return self

    @property
    def kind(self) -> SourceKind:
        return source_kind(self.source)
