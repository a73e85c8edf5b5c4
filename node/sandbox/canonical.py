"""Canonical JSON at the contract boundary (arguments, state values, results, events).

Encoding: ``json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` as
UTF-8, after a walk that admits only dict (str keys), list, tuple (encoded as list), str,
int, bool and None, bounded in depth.  Floats, NaN, sets, bytes and objects are refused:
that keeps every peer's bytes identical.  Decoding refuses floats and NaN/Infinity too,
and integers of more than :data:`MAX_INT_DIGITS` digits.
"""

from __future__ import annotations

import json
from typing import Any

from node.sandbox.errors import BadValue, SizeLimit
from node.sandbox.slots import slack_gas

MAX_DEPTH = 64

_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False
)


def _no_float(text: str) -> Any:
    raise ValueError(f"floating point number {text!r} is not allowed")


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not allowed")


# Integers read from JSON (arguments, state values) are bounded like the ones contracts
# compute (``SandboxLimits.max_int_bits`` = 4096 bits, at most 1,234 decimal digits): a
# 14,000-bit argument would make every operator on it costlier than its gas.
MAX_INT_DIGITS = 1234


def _bounded_int(text: str) -> int:
    if len(text) - (text[0] == "-") > MAX_INT_DIGITS:
        raise ValueError(f"integer of {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


_DECODER = json.JSONDecoder(parse_float=_no_float, parse_constant=_no_constant,
                            parse_int=_bounded_int)


def _plain_nodes(v: Any, depth: int, budget: int) -> int:
    """Node count of a valid JSON value of at most ``budget`` nodes; for a value that is
    invalid, too deep or too large, minus the values walked until that was found (then
    :func:`check_value`'s walk says why, :func:`measure` charges the walk).  A dict also
    counts two units per :data:`slots.SLACK_PER_GAS` slots of slack (deleted entries this
    walk and the encoder scan: a dict left with 1 of 300,000 keys; 0 for dense dicts)."""
    tv = type(v)
    if tv is dict:
        if depth >= MAX_DEPTH:
            return -1
        n = 1 + 2 * slack_gas(v)
        for k, x in v.items():
            if type(k) is not str:
                return -n
            tx = type(x)
            if tx is str or tx is int or tx is bool or x is None:
                n += 1
            else:
                c = _plain_nodes(x, depth + 1, budget - n)
                if c < 0:
                    return c - n
                n += c
            if n > budget:
                return -n
        return n
    if tv is list or tv is tuple:
        if depth >= MAX_DEPTH:
            return -1
        n = 1
        for x in v:
            tx = type(x)
            if tx is str or tx is int or tx is bool or x is None:
                n += 1
            else:
                c = _plain_nodes(x, depth + 1, budget - n)
                if c < 0:
                    return c - n
                n += c
            if n > budget:
                return -n
        return n
    if tv is str or tv is int or tv is bool or v is None:
        return 1 if budget >= 1 else -1
    return -1


def check_value(value: Any, what: str, max_nodes: int = 1 << 20) -> int:
    """Validate a JSON value; returns the number of nodes (used for gas).

    ``max_nodes`` bounds the walk: shared sub-structures (``[[x] * 1000] * 1000``) would
    otherwise be walked (and encoded) once per reference.
    """
    fast = _plain_nodes(value, 0, max_nodes)  # valid values: same count, no allocations
    if fast >= 0:
        return fast
    nodes = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise SizeLimit(f"{what}: more than {max_nodes} JSON values")
        tv = type(v)
        if tv is str or tv is int or tv is bool or v is None:
            continue
        if depth >= MAX_DEPTH:
            raise BadValue(f"{what}: nested deeper than {MAX_DEPTH}")
        if tv is dict:
            for k, item in v.items():
                if type(k) is not str:
                    raise BadValue(f"{what}: object key {type(k).__name__} is not a string")
                stack.append((item, depth + 1))
        elif tv is list or tv is tuple:
            for item in v:
                stack.append((item, depth + 1))
        else:
            raise BadValue(f"{what}: {tv.__name__} is not a JSON value (no floats, sets, bytes)")
    return nodes


def measure(value: Any, max_nodes: int) -> tuple[int, bool]:
    """(work, valid) for ``value``: ``work`` is the number of JSON values walked -- for a
    valid value its node count, for an invalid one the values walked until the first
    without a canonical form.  Raises SizeLimit beyond ``max_nodes``.  Lets a caller charge
    for the work whatever the outcome."""
    n = _plain_nodes(value, 0, max_nodes)
    if n >= 0:
        return n, True
    if -n > max_nodes:
        raise SizeLimit(f"more than {max_nodes} JSON values")
    return -n, False


def min_chars(value: Any, limit: int) -> int:
    """A lower bound of the length of the canonical JSON text of ``value`` (valid, see
    :func:`check_value`), walked until it exceeds ``limit`` (then some number above it).
    The node count bounds the values walked, not the text: ``[s] * 300`` of one
    1,000,000-character ``s`` is 301 values and 300 MB of JSON (``[BIG] * 100_000`` of a
    4096-bit literal: 123 MB of digits), built by the encoder before any size check --
    0.7 s of CPU for 31,000 gas, MEMORY_LIMIT a little further."""
    total = 0
    stack = [value]
    while stack:
        v = stack.pop()
        tv = type(v)
        if tv is str:
            total += len(v) + 2
        elif tv is int:
            bits = v.bit_length()
            total += (bits - 1) * 3 // 10 + 1 if bits else 1  # decimal digits >= bits * log10(2)
        elif tv is dict:
            total += 1 + len(v)
            for k, x in v.items():
                total += len(k) + 2
                stack.append(x)
        elif tv is list or tv is tuple:
            total += 1 + len(v)
            stack.extend(v)
        else:
            total += 4  # true, null
        if total > limit:
            return total
    return total


def encode_text(value: Any) -> str:
    """The canonical JSON text of a value :func:`measure` found valid (not yet UTF-8)."""
    return _ENCODER.encode(value)


def encode(value: Any, what: str, max_bytes: int) -> tuple[bytes, int]:
    """Canonical JSON bytes of ``value`` plus its node count; raises BadValue / SizeLimit."""
    nodes = check_value(value, what, max_bytes)  # every JSON value takes at least one byte
    least = min_chars(value, max_bytes)
    if least > max_bytes:  # refused before the encoder builds it (same outcome as after)
        raise SizeLimit(f"{what}: more than {max_bytes} bytes (at least {least} characters)")
    data = _ENCODER.encode(value).encode("utf-8")
    if len(data) > max_bytes:
        raise SizeLimit(f"{what}: {len(data)} bytes exceeds the limit of {max_bytes}")
    return data, nodes


def dumps(value: Any) -> bytes:
    """Canonical JSON bytes of an already validated value (no size limit)."""
    check_value(value, "value")
    return _ENCODER.encode(value).encode("utf-8")


def decode(data: bytes, what: str) -> Any:
    """Parse JSON bytes, refusing floats, NaN and Infinity; raises BadValue."""
    try:
        return _DECODER.decode(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadValue(f"{what}: not valid JSON without floats: {exc}") from None
