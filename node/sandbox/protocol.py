"""Framing and message conversion of the host <-> worker pipe protocol (sandbox.proto).

A frame is a 4-byte big-endian length followed by that many bytes of one serialized
message.  ``FrameReader`` buffers reads so a frame usually costs one ``read`` syscall;
``write_frames`` sends several frames with one ``write``.

Compact frames.  The hot state traffic uses a documented binary layout instead of
protobuf.  A frame whose first byte is 0x00 is compact (a non-empty protobuf message never
starts with 0x00: field number 0 does not exist); its second byte is the kind.  ``str`` is a
u16 big-endian byte length plus UTF-8, ``blob`` a u32 big-endian length plus raw bytes::

    host -> worker  00 'P'  prefetch table, sent right after every InvokeRequest frame:
                            u32 count, then count x (str namespace, str key, u8 found,
                            blob value if found).  Entry i is "prefetch index i".
    host -> worker  00 'V'  answer to a compact get: u8 found, then the value (rest of frame)
    worker -> host  00 'G'  get: str namespace, str key
    worker -> host  00 'O'  the worker's state operations in program order, sent before any
                            request and before the result: until the end of the frame,
                            'P' str key blob value (put) | 'D' str key (delete) |
                            'R' u32 index (the contract read prefetch entry ``index``)

A state request or result (protobuf, or a compact get) follows the ops frame that precedes
it in the same ``write``.  The host replays 'R' entries on the backend (``backend.get``) in
order with the puts and deletes, so the backend sees exactly the calls, in exactly the
order, that it would without prefetching.
"""

from __future__ import annotations

import math
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


def poll_fd(fd: int, events: int, timeout_s: float) -> int:
    """The events ``fd`` is ready for within ``timeout_s`` seconds (0: none; POLLHUP when
    hung up). poll, not select: select refuses descriptors above FD_SETSIZE (1024), which
    a busy peer's worker pipes may get."""
    p = select.poll()
    p.register(fd, events)
    ready = p.poll(max(0, math.ceil(timeout_s * 1000)))
    return ready[0][1] if ready else 0


def wait_fd(fd: int, events: int, timeout_s: float) -> bool:
    """Whether ``fd`` is ready for ``events`` (or hung up) within ``timeout_s`` seconds."""
    return poll_fd(fd, events, timeout_s) != 0


class FrameReader:
    """Reads length-prefixed frames from a pipe file descriptor.

    A frame whose header announces more than ``max_frame`` bytes is refused (ProtocolError)
    as soon as its header is read (with at most one 64 KiB read of its body); the host
    lowers ``max_frame`` per invocation to the largest answer its limits allow."""

    def __init__(self, fd: int, max_frame: int = MAX_FRAME) -> None:
        self._fd = fd
        self._buf = bytearray()
        self.max_frame = max_frame

    @property
    def fd(self) -> int:
        return self._fd

    def buffered(self) -> bool:
        """Bytes read from the pipe and not yet returned as a frame."""
        return bool(self._buf)

    def _frame(self) -> bytes | None:
        if len(self._buf) < 4:
            return None
        (n,) = _HEADER.unpack_from(self._buf)
        if n > self.max_frame:
            raise ProtocolError(f"frame of {n} bytes exceeds {self.max_frame}")
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
                    if not wait_fd(self._fd, select.POLLIN, left):
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


def write_frames(fd: int, *frames: bytes,
                 timeout: Callable[[], float | None] | None = None) -> None:
    """Write several frames with one ``write`` (blocking until all is written).

    With ``timeout`` (seconds left, as for ``FrameReader.read``) ``fd`` must be
    non-blocking: a peer that stops reading raises TimeoutError at the deadline instead
    of blocking the writer for ever once the pipe buffer is full."""
    parts: list[bytes] = []
    for data in frames:
        parts.append(_HEADER.pack(len(data)))
        parts.append(data)
    view = memoryview(b"".join(parts))
    while view:
        if timeout is not None:
            left = timeout()
            if left is not None:
                if left <= 0:
                    raise TimeoutError("deadline passed")
                if not wait_fd(fd, select.POLLOUT, left):
                    raise TimeoutError("deadline passed")
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            continue
        view = view[n:]


# ------------------------------------------------------------------------- compact frames

PREFETCH = b"\x00P"
VALUE = b"\x00V"
GET = b"\x00G"
OPS = b"\x00O"
OP_PUT = 0x50  # 'P'
OP_DELETE = 0x44  # 'D'
OP_READ = 0x52  # 'R'
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
MAX_STR = 0xFFFF

EMPTY_PREFETCH = PREFETCH + _U32.pack(0)


def is_compact(frame: bytes) -> bool:
    return frame[:1] == b"\x00" and len(frame) >= 2


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > MAX_STR:
        raise ValueError("string too long for a compact frame")
    return _U16.pack(len(b)) + b


def _blob(b: bytes) -> bytes:
    return _U32.pack(len(b)) + b


class _Cursor:
    """Bounds-checked reader of a compact frame (raises ProtocolError on any defect)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 2) -> None:
        self.data = data
        self.pos = pos

    def done(self) -> bool:
        return self.pos >= len(self.data)

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ProtocolError("truncated compact frame")
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise ProtocolError("truncated compact frame")
        v = self.data[self.pos]
        self.pos += 1
        return v

    def u32(self) -> int:
        (v,) = _U32.unpack(self.take(4))
        return int(v)

    def str(self) -> str:
        (n,) = _U16.unpack(self.take(2))
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("compact frame string is not UTF-8") from None

    def blob(self) -> bytes:
        return self.take(self.u32())


def encode_prefetch(entries: list[tuple[str, str, bytes | None]]) -> bytes:
    """The 00 'P' frame of (namespace, key, value or None) entries."""
    parts = [PREFETCH, _U32.pack(len(entries))]
    add = parts.append
    u16, u32 = _U16.pack, _U32.pack
    for ns, key, value in entries:
        nb, kb = ns.encode(), key.encode()
        if len(nb) > MAX_STR or len(kb) > MAX_STR:
            raise ValueError("string too long for a compact frame")
        if value is None:
            add(u16(len(nb)) + nb + u16(len(kb)) + kb + b"\x00")
        else:
            add(u16(len(nb)) + nb + u16(len(kb)) + kb + b"\x01" + u32(len(value)))
            add(value)
    return b"".join(parts)


def decode_prefetch(frame: bytes) -> list[tuple[str, str, bytes | None]]:
    if frame[:2] != PREFETCH:
        raise ProtocolError("expected a prefetch frame")
    end = len(frame)
    if end < 6:
        raise ProtocolError("truncated compact frame")
    u16, u32 = _U16.unpack_from, _U32.unpack_from
    count = u32(frame, 2)[0]
    pos = 6
    out: list[tuple[str, str, bytes | None]] = []
    add = out.append
    try:
        for _ in range(count):
            if pos + 2 > end:
                raise ProtocolError("truncated compact frame")
            n = u16(frame, pos)[0]
            a = pos + 2
            pos = a + n
            if pos + 2 > end:
                raise ProtocolError("truncated compact frame")
            ns = frame[a:pos].decode("utf-8")
            n = u16(frame, pos)[0]
            a = pos + 2
            pos = a + n
            if pos + 1 > end:
                raise ProtocolError("truncated compact frame")
            key = frame[a:pos].decode("utf-8")
            found = frame[pos]
            pos += 1
            if not found:
                add((ns, key, None))
                continue
            if pos + 4 > end:
                raise ProtocolError("truncated compact frame")
            n = u32(frame, pos)[0]
            a = pos + 4
            pos = a + n
            if pos > end:
                raise ProtocolError("truncated compact frame")
            add((ns, key, frame[a:pos]))
    except UnicodeDecodeError:
        raise ProtocolError("compact frame string is not UTF-8") from None
    if pos != end:
        raise ProtocolError("trailing bytes in a prefetch frame")
    return out


def encode_get(namespace: str, key: str) -> bytes:
    return GET + _str(namespace) + _str(key)


def decode_get(frame: bytes) -> tuple[str, str]:
    c = _Cursor(frame)
    ns = c.str()
    key = c.str()
    if not c.done():
        raise ProtocolError("trailing bytes in a get frame")
    return ns, key


def encode_value(value: bytes | None) -> bytes:
    return VALUE + b"\x00" if value is None else VALUE + b"\x01" + value


def decode_value(frame: bytes) -> bytes | None:
    if len(frame) < 3 or frame[:2] != VALUE or frame[2] > 1:
        raise ProtocolError("malformed value frame")
    return frame[3:] if frame[2] else None


class OpsBuilder:
    """The worker's pending 00 'O' frame (puts, deletes and prefetch reads in order)."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def __bool__(self) -> bool:
        return bool(self._parts)

    def put(self, key: str, value: bytes) -> None:
        self._parts.append(b"P" + _str(key) + _blob(value))

    def delete(self, key: str) -> None:
        self._parts.append(b"D" + _str(key))

    def read(self, index: int) -> None:
        self._parts.append(b"R" + _U32.pack(index))

    def clear(self) -> None:
        self._parts = []

    def take(self) -> bytes:
        """The frame; the builder is empty afterwards."""
        frame = OPS + b"".join(self._parts)
        self._parts = []
        return frame


Op = tuple[int, str, bytes, int]  # (op, key, value, prefetch index)


def decode_ops(frame: bytes, max_ops: int = 1 << 62) -> list[Op]:
    """Ops of a 00 'O' frame: (OP_PUT, key, value, 0) | (OP_DELETE, key, b"", 0) |
    (OP_READ, "", b"", index); more than ``max_ops`` ops is a ProtocolError (checked
    while decoding, so a flood of tiny ops never becomes a huge list)."""
    out: list[Op] = []
    add = out.append
    u16, u32 = _U16.unpack_from, _U32.unpack_from
    end = len(frame)
    pos = 2
    try:
        while pos < end:
            if len(out) >= max_ops:
                raise ProtocolError(f"more than {max_ops} state operations")
            op = frame[pos]
            if op == OP_READ:
                if pos + 5 > end:
                    raise ProtocolError("truncated compact frame")
                add((OP_READ, "", b"", u32(frame, pos + 1)[0]))
                pos += 5
                continue
            if op not in (OP_PUT, OP_DELETE):
                raise ProtocolError(f"unknown state operation {op:#x}")
            if pos + 3 > end:
                raise ProtocolError("truncated compact frame")
            n = u16(frame, pos + 1)[0]
            k0 = pos + 3
            pos = k0 + n
            if pos > end:
                raise ProtocolError("truncated compact frame")
            key = frame[k0:pos].decode("utf-8")
            if op == OP_DELETE:
                add((OP_DELETE, key, b"", 0))
                continue
            if pos + 4 > end:
                raise ProtocolError("truncated compact frame")
            n = u32(frame, pos)[0]
            v0 = pos + 4
            pos = v0 + n
            if pos > end:
                raise ProtocolError("truncated compact frame")
            add((OP_PUT, key, frame[v0:pos], 0))
    except UnicodeDecodeError:
        raise ProtocolError("compact frame string is not UTF-8") from None
    return out


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
