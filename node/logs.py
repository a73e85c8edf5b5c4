"""Structured logs for node processes: one JSON object per line on stderr.

Every log call under ``node/`` (``tests/foundation/test_log_events.py`` keeps it so) gives a
message template of the form::

    event=NAME key=%d key=%s key=%r ...: human text

``NAME`` is a stable snake_case event, each field's value one %-conversion (or a literal
without spaces) and the free text after ``: `` is for people. The formatter writes ``event``
and the fields as top-level JSON members beside ``msg`` (the whole message, as before), so an
operator selects on them (``jq 'select(.event=="leader_elected")'``). Fields are read from the
template and its arguments, never from the formatted text: an argument holding spaces, quotes
or ``=`` is one field's value whatever it holds, and cannot make up a field of its own.
``%d`` fields are JSON integers, ``%f``-style fields numbers, ``%r`` of a string the string
itself (unquoted), anything else the text the conversion gives. A message logged without
arguments (already formatted) is read the same way, a value quoted as a Python string literal
(``detail='a b'``) being that string. A field named like a member the formatter writes itself
(``ts``, ``level``, ``logger``, ``msg``, ``exc``, ``event``) is left in ``msg`` only.
Characters a line-oriented reader or a terminal would act on (U+2028, NEL, C1 and bidi
controls, lone surrogates) are written as ``\\uXXXX`` escapes: the line stays one line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

RESERVED = frozenset({"ts", "level", "logger", "msg", "exc", "event"})

_EVENT = re.compile(r"event=([a-z][a-z0-9_]*)(?=$|[ :])")
_KEY = re.compile(r" ([a-z_][a-z0-9_]*)=")
# one printf-style conversion (what ``str % args`` accepts; ``*`` widths are not supported)
_CONV = re.compile(
    r"%(?:\((?P<name>[^)]*)\))?[#0 +-]*\d*(?:\.\d+)?[hlL]?(?P<type>[diouxXeEfFgGcrsa%])"
)
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", re.DOTALL)
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "r": "\r", "t": "\t"}
_QUOTED = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\"""")
# What json.dumps(ensure_ascii=False) writes raw though it ends or corrupts a line for a reader:
# line and paragraph separators and NEL (str.splitlines and JavaScript break lines there), C1
# controls and DEL (a terminal interprets them), bidi controls (they reorder what is shown) and
# lone surrogates (no UTF-8 for them). Only string values can hold them: escaped, the line is
# the same JSON.
_UNSAFE = re.compile(r"[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff\ufeff]")


def event_fields(template: object, args: object) -> dict[str, Any]:
    """``event`` and the key=value fields of a log call's ``template`` (``record.msg``) with
    its ``args`` (``record.args``); {} for a message that does not start with ``event=``, and
    whatever was read before anything unexpected (never an exception)."""
    if not isinstance(template, str):
        return {}
    m = _EVENT.match(template)
    if m is None:
        return {}
    out: dict[str, Any] = {"event": m.group(1)}
    # a log line is written whatever its arguments hold: the fields read so far are kept
    with contextlib.suppress(Exception):
        _read_fields(template, m.end(), args if args else None, out)
    return out


def _read_fields(template: str, pos: int, args: object, out: dict[str, Any]) -> None:
    index = 0  # the next positional argument
    while pos < len(template):
        key = _KEY.match(template, pos)
        if key is None:
            return  # ": human text", or text without a separator
        pos = key.end()
        quoted = _QUOTED.match(template, pos) if args is None else None
        if args is None and quoted is None and template.startswith(("'", '"'), pos):
            return  # an unterminated quote: where its value ends is anyone's guess
        if quoted is not None:
            end = quoted.end()
            value: Any = _unquote(quoted.group(0))
        else:
            end = template.find(" ", pos)
            end = len(template) if end < 0 else end
            if template[end - 1] == ":" and end > pos:  # "key=%d: text": the colon separates
                end -= 1
            token = template[pos:end]
            if args is None:
                value = token
            else:
                value, index = _value(token, args, index)
        if end < len(template) and template[end] not in " :":
            return  # a quoted value run into more text: not a field
        name = key.group(1)
        if name not in RESERVED and name not in out:
            out[name] = value
        pos = end
        if template.startswith(":", pos):
            return


def _unquote(literal: str) -> str:
    """The string a quoted Python string literal (as ``repr`` writes one) stands for, without
    compiling anything: an escape ``repr`` does not write is kept as it stands."""

    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        if code[0] in "xuU" and len(code) > 1 and int(code[1:], 16) <= sys.maxunicode:
            return chr(int(code[1:], 16))
        return _ESCAPES.get(code, m.group(0))

    return _ESCAPE.sub(one, literal[1:-1])


def _value(token: str, args: object, index: int) -> tuple[Any, int]:
    """The value of one field's ``token`` (its part of the template), and the index of the
    next positional argument (every conversion in the token consumes one, as ``%`` does)."""
    convs = [c for c in _CONV.finditer(token) if c.group("type") != "%"]
    taken: list[object] = []
    for c in convs:
        if c.group("name") is not None:
            if not isinstance(args, Mapping):
                raise TypeError("a named conversion needs a mapping")
            taken.append(args[c.group("name")])
        elif isinstance(args, tuple):
            taken.append(args[index])
            index += 1
        else:
            taken.append(args)  # a single mapping argument, formatted as a whole
    if len(convs) == 1 and convs[0].span() == (0, len(token)):
        return _typed(convs[0], taken[0]), index
    if not convs:
        return token.replace("%%", "%"), index
    if isinstance(args, Mapping) and all(c.group("name") is not None for c in convs):
        return token % args, index
    return token % tuple(taken), index


def _typed(conv: re.Match[str], arg: object) -> Any:
    text = conv.group(0) % (arg,) if conv.group("name") is None else conv.group(0) % {conv.group("name"): arg}
    kind = conv.group("type")
    if kind in "diu":
        return int(text)
    if kind in "eEfFgG":
        number = float(text)
        return number if math.isfinite(number) else text  # JSON has no NaN or Infinity
    if kind == "r" and isinstance(arg, str):
        return arg
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: ts (UTC, ms), level, logger, msg, event and its fields
    (see the module docstring), exc."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(event_fields(record.msg, record.args))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        line = json.dumps(doc, ensure_ascii=False)
        return _UNSAFE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", line) if _UNSAFE.search(line) else line


def configure_json_logging(level: str) -> None:
    """Send every log record to stderr as a JSON line at ``level``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
