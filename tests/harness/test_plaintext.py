"""The plaintext finder used by the privacy tests."""

from __future__ import annotations

from tests.harness.plaintext import mentions


def test_mentions_finds_a_word_but_not_inside_ciphertext_or_digests() -> None:
    assert mentions('{"diagnosis":"I10"}', "I10") and mentions("I10 hypertension", "I10")
    assert mentions("born 1958-03-12", "1958") and mentions("{'name': 'Zhang Wei'}", "Zhang")
    assert not mentions('{"c":"MPprNguEnDI10E"}', "I10") and not mentions("ab1958cd", "1958")
    assert not mentions("x+I10/y", "I10")
