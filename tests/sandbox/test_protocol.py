"""Pipe framing and message conversion of the host <-> worker protocol."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import pytest
from rxchain.v1 import sandbox_pb2 as pb

from node.sandbox import protocol
from node.sandbox import types as t


@pytest.fixture()
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        for fd in (r, w):
            with contextlib.suppress(OSError):
                os.close(fd)


def test_frames_round_trip_including_split_and_large(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = protocol.FrameReader(r)
    big = os.urandom(300_000)

    def send() -> None:
        for m in (b"", b"a", big):
            protocol.write_frame(w, m)

    writer = threading.Thread(target=send)
    writer.start()
    assert [reader.read(), reader.read(), reader.read()] == [b"", b"a", big]
    writer.join(timeout=10)
    # a header arriving in pieces
    os.write(w, b"\x00\x00")
    os.write(w, b"\x00\x03ab")
    os.write(w, b"c")
    assert reader.read() == b"abc"


def test_oversized_frame_and_eof(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = protocol.FrameReader(r, max_frame=10)
    os.write(w, b"\x00\x00\x00\x0b" + b"x" * 11)
    with pytest.raises(protocol.ProtocolError) as info:
        reader.read()
    assert not info.value.eof
    r2, w2 = os.pipe()
    os.write(w2, b"\x00\x00")
    os.close(w2)
    with pytest.raises(protocol.ProtocolError) as info2:
        protocol.FrameReader(r2).read()
    assert info2.value.eof
    os.close(r2)


def test_read_deadline(pipe: tuple[int, int]) -> None:
    r, _ = pipe
    with pytest.raises(TimeoutError):
        protocol.FrameReader(r).read(lambda: 0.05)
    with pytest.raises(TimeoutError):
        protocol.FrameReader(r).read(lambda: -1.0)


def test_limits_and_caller_conversion() -> None:
    limits = t.SandboxLimits(max_recursion_depth=7, max_write_keys=3, cpu_seconds=2)
    assert protocol.limits_from_msg(protocol.limits_to_msg(limits)) == limits
    caller = t.CallerInfo("o", "r", "n", {"a": "1"}, "hospital", "community")
    assert protocol.caller_from_msg(protocol.caller_to_msg(caller)) == caller
    msg = pb.HostMessage(invoke=pb.InvokeRequest(code_hash="h", args_json=b"{}"))
    assert pb.HostMessage.FromString(msg.SerializeToString()).invoke.code_hash == "h"
