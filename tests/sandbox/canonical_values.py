"""Hypothesis strategies for JSON-like values with every code point (control characters,
quotes, backslashes, lone surrogates), and the node's canonical encoding of one as text.
Shared by the sandbox's ``ctx.canonical_json`` tests and the contracts' commitment tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from node.crypto.canonical import canonical_json

texts = st.text(st.characters(blacklist_categories=()), max_size=8) | st.sampled_from(
    ['"', "\\", "\x00", "\x1f", "\x7f", "\u2028", "\ud800", "\U0001f48a", "\\u0000"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=25,
)


def expected(value: Any) -> str:
    """canonical_json as text, "" when it has none (a lone surrogate cannot be UTF-8)."""
    try:
        return canonical_json(value).decode("utf-8")
    except UnicodeEncodeError:
        return ""
