"""Wire codec of ``EnvelopeBatch`` that keeps every envelope's bytes exactly as signed.

``EnvelopeBatch { repeated Envelope envelopes = 1; }`` is, on the wire, a sequence of
length-delimited fields: tag byte ``0x0a`` (field 1, wire type 2), a varint byte length,
then the serialized Envelope. :func:`encode_batch` frames already-serialized envelopes
that way and :func:`split_batch` returns the framed byte strings verbatim, so neither side
parses and re-serialises an envelope (blocks hash the bytes the client sent) and a batch
costs no protobuf message objects. Any other field, wire type or a truncated frame is
refused with :class:`BatchDecodeError` (the whole message is malformed).
"""

from __future__ import annotations

from collections.abc import Sequence

_TAG = 0x0A  # field 1, wire type 2 (length-delimited)


# Envelopes one EnvelopeBatch message may hold at most when read (any sender of this release
# puts at most 512 in one: the orderers' forwarding; a peer 256): more is refused as the message
# is split (BatchTooLarge), before a list of them is made. An 8 MiB message holds four million
# empty envelopes: split and refused one by one, it took the orderer 6 GB and a minute.
MAX_READ_ENVELOPES = 4096


class BatchDecodeError(ValueError):
    """The bytes are not a well-formed EnvelopeBatch."""


class BatchTooLarge(BatchDecodeError):
    """The EnvelopeBatch holds more envelopes than its reader takes."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_batch(envelopes: Sequence[bytes]) -> bytes:
    """A serialized EnvelopeBatch holding ``envelopes`` (serialized Envelopes) in order."""
    parts: list[bytes] = []
    for env in envelopes:
        parts.append(b"\x0a")
        parts.append(_varint(len(env)))
        parts.append(env)
    return b"".join(parts)


def split_batch(data: bytes, max_envelopes: int | None = None) -> list[bytes]:
    """The serialized Envelopes of an EnvelopeBatch, verbatim and in order; BatchTooLarge when
    it holds more than ``max_envelopes`` (None: no bound)."""
    out: list[bytes] = []
    view = memoryview(data)
    pos, end = 0, len(data)
    while pos < end:
        if max_envelopes is not None and len(out) >= max_envelopes:
            raise BatchTooLarge(f"more than {max_envelopes} envelopes in one message")
        if data[pos] != _TAG:
            raise BatchDecodeError(f"unexpected field tag {data[pos]:#x} at offset {pos}")
        pos += 1
        length, shift = 0, 0
        while True:
            if pos >= end:
                raise BatchDecodeError("truncated length")
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 35:
                raise BatchDecodeError("length varint too long")
        if pos + length > end:
            raise BatchDecodeError(f"envelope of {length} bytes runs past the message end")
        out.append(bytes(view[pos:pos + length]))
        pos += length
    return out
