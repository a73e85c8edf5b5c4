"""Framing and message conversion of the host <-> worker pipe protocol (sandbox.proto).

A frame is a 4-byte big-endian length followed by that many bytes of one serialized
message.  ``FrameReader`` buffers reads so a frame usually costs one ``read`` syscall.
"""

from __future__ import annotations

import os
import select
import struct
from collections.abc import Callable

from rxchain.v1 import sandbox_pb2 as pb

from node.sandbox import types as t

MAX_FRAME = 256 << 20
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """Malformed frame, oversized frame or end of stream (``eof``)."""

    def __init__(self, message: str, eof: bool = False) -> None:
        super().__init__(message)
        self.eof = eof


class FrameReader:
    """Reads length-prefixed frames from a pipe file descriptor."""

    def __init__(self, fd: int, max_frame: int = MAX_FRAME) -> None:
        self._fd = fd
        self._buf = bytearray()
        self._max = max_frame

    def _frame(self) -> bytes | None:
        if len(self._buf) < 4:
            return None
        (n,) = _HEADER.unpack_from(self._buf)
        if n > self._max:
            raise ProtocolError(f"frame of {n} bytes exceeds {self._max}")
        if len(self._buf) < 4 + n:
            return None
        frame = bytes(self._buf[4 : 4 + n])
        del self._buf[: 4 + n]
        return frame

    def read(self, timeout: Callable[[], float | None] | None = None) -> bytes:
        """Next frame; ``timeout()`` gives the seconds left (None = wait forever)."""
        while True:
            frame = self._frame()
            if frame is not None:
                return frame
            if timeout is not None:
                left = timeout()
                if left is not None:
                    if left <= 0:
                        raise TimeoutError("deadline passed")
                    ready, _, _ = select.select([self._fd], [], [], left)
                    if not ready:
                        raise TimeoutError("deadline passed")
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                raise ProtocolError("end of stream", eof=True)
            self._buf += chunk


def write_frame(fd: int, data: bytes) -> None:
    """Write one frame completely (blocking)."""
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def limits_to_msg(limits: t.SandboxLimits) -> pb.SandboxLimitsMsg:
    return pb.SandboxLimitsMsg(
        max_recursion_depth=limits.max_recursion_depth,
        max_str_len=limits.max_str_len,
        max_collection_len=limits.max_collection_len,
        max_int_bits=limits.max_int_bits,
        max_value_bytes=limits.max_value_bytes,
        max_key_len=limits.max_key_len,
        max_write_keys=limits.max_write_keys,
        max_write_bytes=limits.max_write_bytes,
        max_events=limits.max_events,
        max_range_items=limits.max_range_items,
        max_history_items=limits.max_history_items,
        max_args_bytes=limits.max_args_bytes,
        cpu_seconds=limits.cpu_seconds,
    )


def limits_from_msg(m: pb.SandboxLimitsMsg) -> t.SandboxLimits:
    return t.SandboxLimits(
        max_recursion_depth=m.max_recursion_depth,
        max_str_len=m.max_str_len,
        max_collection_len=m.max_collection_len,
        max_int_bits=m.max_int_bits,
        max_value_bytes=m.max_value_bytes,
        max_key_len=m.max_key_len,
        max_write_keys=m.max_write_keys,
        max_write_bytes=m.max_write_bytes,
        max_events=m.max_events,
        max_range_items=m.max_range_items,
        max_history_items=m.max_history_items,
        max_args_bytes=m.max_args_bytes,
        cpu_seconds=m.cpu_seconds,
    )


def caller_to_msg(c: t.CallerInfo) -> pb.SandboxCaller:
    return pb.SandboxCaller(
        org=c.org,
        role=c.role,
        name=c.name,
        attrs=dict(c.attrs),
        org_kind=c.org_kind,
        hospital_level=c.hospital_level,
    )


def caller_from_msg(m: pb.SandboxCaller) -> t.CallerInfo:
    return t.CallerInfo(
        org=m.org,
        role=m.role,
        name=m.name,
        attrs=dict(m.attrs),
        org_kind=m.org_kind,
        hospital_level=m.hospital_level,
    )
