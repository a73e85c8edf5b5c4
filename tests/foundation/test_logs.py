"""node/logs.py: a JSON line per record with the message's event and key=value fields as
members of their own, read from the template and its arguments so that no value -- spaces,
quotes, '=', newlines, a field-like text -- can break the line, move a field or make one up."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from node.logs import JsonFormatter, event_fields


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("rxchain.test.logs")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, out
    log.removeHandler(handler)


def _strict(text: str) -> dict[str, Any]:
    """One JSON object on one line; NaN/Infinity (not JSON) refused."""
    assert text.endswith("\n") and text.count("\n") == 1

    def refuse(name: str) -> None:
        raise AssertionError(f"non-JSON constant {name}")

    doc = json.loads(text, parse_constant=refuse)
    assert isinstance(doc, dict)
    return doc


def test_event_and_fields_are_members_beside_the_unchanged_msg(lines) -> None:
    log, out = lines
    log.info("event=leader_elected orderer=%d term=%d", 2, 7)
    doc = _strict(out.getvalue())
    assert doc["event"] == "leader_elected" and doc["orderer"] == 2 and doc["term"] == 7
    assert doc["msg"] == "event=leader_elected orderer=2 term=7"
    assert doc["level"] == "INFO" and doc["logger"] == "rxchain.test.logs"
    assert set(doc) == {"ts", "level", "logger", "msg", "event", "orderer", "term"}


ODD = "a b='c' d=\"e\" f=g: h\nevent=forged level=CRITICAL \\ \u201cquoted\u201d"


def test_odd_values_stay_in_their_field(lines) -> None:
    log, out = lines
    log.warning("event=envelope_refused tx_id=%r reason=%s detail=%r grace_s=%.1f: refused %s",
                ODD, "x y=z", ODD, 1.25, "more=text")
    doc = _strict(out.getvalue())
    assert doc["tx_id"] == ODD and doc["detail"] == ODD  # %r of a string: the string itself
    assert doc["reason"] == "x y=z" and doc["grace_s"] == 1.2
    assert doc["event"] == "envelope_refused" and doc["level"] == "WARNING"
    assert set(doc) == {"ts", "level", "logger", "msg", "event", "tx_id", "reason", "detail", "grace_s"}
    assert doc["msg"] == (f"event=envelope_refused tx_id={ODD!r} reason=x y=z detail={ODD!r} "
                          "grace_s=1.2: refused more=text")


def test_fields_named_like_the_formatters_members_do_not_replace_them(lines) -> None:
    log, out = lines
    log.error("event=x msg=%s level=%s event=%s ts=%s n=%d", "fake", "DEBUG", "other", "0", 3)
    doc = _strict(out.getvalue())
    assert doc["msg"] == "event=x msg=fake level=DEBUG event=other ts=0 n=3"
    assert doc["level"] == "ERROR" and doc["event"] == "x" and doc["ts"] != "0" and doc["n"] == 3


def test_exception_keeps_its_traceback_and_the_fields(lines) -> None:
    log, out = lines
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("event=rpc_internal_error method=%s error=%s", "/a.B/C", "ValueError")
    doc = _strict(out.getvalue())
    assert doc["event"] == "rpc_internal_error" and doc["method"] == "/a.B/C"
    assert "ValueError: boom" in doc["exc"]


def test_non_finite_numbers_are_text_not_invalid_json(lines) -> None:
    log, out = lines
    log.info("event=x a=%f b=%.1f c=%d", float("nan"), float("inf"), True)
    doc = _strict(out.getvalue())
    assert doc["a"] == "nan" and doc["b"] == "inf" and doc["c"] == 1


@pytest.mark.parametrize(("msg", "fields"), [
    # already formatted (no arguments): quoted values as repr writes them are read back
    ("event=x detail='a b=c' n=5: text x=1", {"event": "x", "detail": "a b=c", "n": "5"}),
    ("event=x detail=\"it's\" who='o\\'k'", {"event": "x", "detail": "it's", "who": "o'k"}),
    (f"event=x detail={ODD!r} n=5", {"event": "x", "detail": ODD, "n": "5"}),
    ("event=x path='C:\\d\\q' odd='\\q\\N{x}\\x4' n=1", {"event": "x", "path": "C:\\d\\q", "odd": "\\q\\N{x}\\x4", "n": "1"}),
    ("event=x a=1 detail='unterminated b=1", {"event": "x", "a": "1"}),
    ("event=x detail='a'b c=1", {"event": "x"}),
    ("event=x offset_ms=5: this orderer's clock", {"event": "x", "offset_ms": "5"}),
    ("event=x listen=127.0.0.1:7050", {"event": "x", "listen": "127.0.0.1:7050"}),
    ("event=x node=n gateway work a=b", {"event": "x", "node": "n"}),
    ("orderer 1 is leader (term 3)", {}),
    ("event=Bad a=1", {}),
    ("events=x a=1", {}),
])
def test_preformatted_messages(lines, msg, fields) -> None:
    log, out = lines
    log.info(msg)
    doc = _strict(out.getvalue())
    assert doc["msg"] == msg
    assert {k: v for k, v in doc.items() if k not in ("ts", "level", "logger", "msg")} == fields


def test_conversions_inside_a_value_and_after_the_fields_keep_arguments_in_step() -> None:
    assert event_fields("event=x listen=%s:%d n=%d%% m=%x: %s of %d", ("h", 5, 6, 255, "a", 1)) == {
        "event": "x", "listen": "h:5", "n": "6%", "m": "ff"}
    assert event_fields("event=x a=%(a)r b=%(b)d", {"a": "1 2", "b": 3}) == {"event": "x", "a": "1 2", "b": 3}


def test_arguments_that_do_not_fit_lose_fields_never_the_line(lines) -> None:
    assert event_fields("event=x a=%d b=%s", ("notint", "y")) == {"event": "x"}
    assert event_fields(b"event=x", ()) == {}
    log, out = lines
    log.info(ValueError("event=x a=1"))  # a message that is not a string
    assert _strict(out.getvalue())["msg"] == "event=x a=1"


# what a client puts in a tx id or a detail: line separators (str.splitlines, JavaScript), NEL,
# a C1 CSI and a bidi override (acted on by terminals and viewers), a lone surrogate (no UTF-8)
HOSTILE = "a\u2028event=forged\u2029b\x85c\x9b31md\u202ee\udc80f\ufeff"


def test_a_value_cannot_split_the_line_for_a_line_reader(lines) -> None:
    """json.dumps(ensure_ascii=False) escapes only C0 controls: a U+2028 or NEL in a
    client-chosen value (the tx id of a refused envelope, %r's string given raw to its field)
    was written raw, and a reader splitting on lines (str.splitlines, as the cluster tests'
    log readers do) got two halves of invalid JSON; a lone surrogate cannot be encoded at all."""
    log, out = lines
    log.warning("event=envelope_refused tx_id=%r reason=%s detail=%s: refused envelope", HOSTILE, "BAD", HOSTILE)
    text = out.getvalue()
    assert len(text.splitlines()) == 1 and text.rstrip("\n").isprintable()
    text.encode("utf-8")  # every character encodable
    doc = _strict(text)
    assert doc["tx_id"] == HOSTILE and doc["detail"] == HOSTILE and doc["reason"] == "BAD"
    assert doc["msg"] == f"event=envelope_refused tx_id={HOSTILE!r} reason=BAD detail={HOSTILE}: refused envelope"
    assert "\\u2028" in text and "\\u0085" in text and "\\u202e" in text and "\\udc80" in text
    out.seek(0)
    out.truncate()
    log.info("event=caught_up orderer=%d block=%d note=%s", 1, 2, "\u4e2d\u6587 caf\u00e9")
    assert "\u4e2d\u6587 caf\u00e9" in out.getvalue()  # printable text is left as it is
