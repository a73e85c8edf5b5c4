"""Every log call under node/ names a stable event an operator can alert on: its message is a
string literal ``event=snake_case_name key=%x ...`` with every field's value a %-argument (or
a literal without spaces), then nothing or ``: human text`` (node/logs.py reads the fields from
exactly this shape); the README's Operations section lists every event. A new free-text log
call fails here instead of reaching an operator's log pipeline unalertable."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from node.logs import RESERVED, event_fields

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
LEVELS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "log"}
# a field's value in a template: one %-conversion (no ``*`` width: it takes an extra argument)
# or literal text without spaces, quotes or % (a colon only inside it: ": " starts the text)
_CONV = r"%[#0 +-]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]"
_TEMPLATE = re.compile(
    rf"event=(?P<event>[a-z][a-z0-9_]*)(?P<fields>(?: [a-z_][a-z0-9_]*=(?:{_CONV}|[^\s'\"%:]|:(?=\S))+)*)"
    r"(?:: (?P<text>.+))?",
    re.DOTALL,
)
_FIELD = re.compile(r" ([a-z_][a-z0-9_]*)=")
_ANY_CONV = re.compile(r"%%|" + _CONV)


def _is_log_call(node: ast.AST) -> bool:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    return node.func.attr in LEVELS and "log" in ast.unparse(node.func.value).lower()


def log_calls(source: str) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(source)) if _is_log_call(n)]  # type: ignore[misc]


def _message_args(call: ast.Call) -> list[ast.expr]:
    """The message and its arguments (``log.log(level, msg, ...)`` has the level first)."""
    return call.args[1:] if isinstance(call.func, ast.Attribute) and call.func.attr == "log" else call.args


def problems(call: ast.Call) -> list[str]:
    """What is wrong with one log call's message (empty: an event with well-formed fields)."""
    args = _message_args(call)
    if not args or not isinstance(args[0], ast.Constant) or not isinstance(args[0].value, str):
        return ["the message is not a string literal (an f-string or variable hides its fields)"]
    template, rest = args[0].value, args[1:]
    m = _TEMPLATE.fullmatch(template)
    if m is None:
        return [f"{template!r} is not 'event=snake_case_name key=%x ...[: text]'"]
    out = []
    keys = _FIELD.findall(m.group("fields"))
    if clash := sorted(set(keys) & RESERVED):
        out.append(f"fields {clash} clash with the JSON members the formatter writes")
    if len(keys) != len(set(keys)):
        out.append(f"a field is named twice in {template!r}")
    convs = [c for c in _ANY_CONV.findall(template) if c != "%%"]
    if any(isinstance(a, ast.Starred) for a in rest) or len(convs) != len(rest):
        out.append(f"{len(convs)} conversions for {len(rest)} arguments in {template!r}")
    return out


def _node_calls() -> list[tuple[str, ast.Call]]:
    found = []
    for path in sorted((ROOT / "node").rglob("*.py")):
        for call in log_calls(path.read_text()):
            found.append((f"{path.relative_to(ROOT)}:{call.lineno}", call))
    return found


def test_every_node_log_call_names_an_event_with_well_formed_fields() -> None:
    calls = _node_calls()
    assert len(calls) > 60  # the walk finds the calls (70 when this test was written)
    bad = {where: p for where, call in calls if (p := problems(call))}
    assert bad == {}


def test_the_formatter_reads_every_node_template_field_for_field() -> None:
    """Each real template, its string arguments full of spaces, quotes, '=' and ': ': the
    formatter gives exactly the template's fields, each string field the argument as given."""
    odd = "a b='c' \"d\" e=f: g=h"
    checked = 0
    for where, call in _node_calls():
        template = _message_args(call)[0].value  # type: ignore[attr-defined]
        convs = [c for c in _ANY_CONV.findall(template) if c != "%%"]
        args = tuple(7 if c[-1] in "diouxXc" else 1.5 if c[-1] in "eEfFgG" else odd for c in convs)
        fields = event_fields(template, args)
        m = _TEMPLATE.fullmatch(template)
        assert m is not None
        values = dict(re.findall(r" ([a-z_][a-z0-9_]*)=(\S+)", m.group("fields")))
        assert set(fields) == {"event"} | set(values), where
        for key, spec in values.items():
            if spec in ("%s", "%r"):
                assert fields[key] == odd, where
                checked += 1
    assert checked > 30


def test_readme_lists_every_event() -> None:
    events = set()
    for _, call in _node_calls():
        m = _TEMPLATE.fullmatch(_message_args(call)[0].value)  # type: ignore[attr-defined]
        assert m is not None
        events.add(m.group("event"))
    assert len(events) > 40
    ops = README.read_text().split("## Operations", 1)[1].split("\n## ", 1)[0]
    logs = ops.split("\nLogs:", 1)[1].split("\nMetrics", 1)[0]
    assert sorted(e for e in events if f"`{e}`" not in logs) == []
    listed = set(re.findall(r"`([a-z][a-z0-9_]*)`", logs.split("\n* ", 1)[1]))
    assert sorted(listed - events) == []  # no event the nodes no longer log


def test_the_walk_catches_free_text_and_malformed_fields() -> None:
    """The check above can fail: each of these calls is refused."""
    source = '''
_log.info("orderer %d is leader (term %d)", 1, 2)
log.warning(f"event=x a={v}")
logging.getLogger(__name__).error("event=Bad-Name a=%d", 1)
_log.info("event=x a=%d b=%d", 1)
_log.info("event=x msg=%s", m)
_log.info("event=x a=%s a=%s", 1, 2)
_log.info("event=x a=%s gateway work still running", 1)
_log.info("event=x detail='%s'", d)
_log.info("event=x a=%*d", 3, 1)
self._log.log(20, "refused envelope %s", t)
'''
    calls = log_calls(source)
    assert len(calls) == 10
    assert [c.lineno for c in calls if not problems(c)] == []
    good = log_calls('_log.info("event=leader_elected orderer=%d term=%d", 1, 2)\n'
                     '_log.warning("event=x path=%r bytes=%d: truncating %d bytes", p, 1, 2)\n'
                     '_log.log(30, "event=x draining=1 listen=%s:%d", h, p)\n')
    assert [problems(c) for c in good] == [[], [], []]
