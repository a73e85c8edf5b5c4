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


# The limits that travel to a worker: exactly the fields of SandboxLimitsMsg (memory and the
# wall-clock timeout are applied by the host, not sent).
_LIMIT_FIELDS = tuple(f.name for f in pb.SandboxLimitsMsg.DESCRIPTOR.fields)


def limits_to_msg(limits: t.SandboxLimits) -> pb.SandboxLimitsMsg:
    return pb.SandboxLimitsMsg(**{name: getattr(limits, name) for name in _LIMIT_FIELDS})


def limits_from_msg(m: pb.SandboxLimitsMsg) -> t.SandboxLimits:
    return t.SandboxLimits(**{name: getattr(m, name) for name in _LIMIT_FIELDS})


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
