"""Looking for plaintext in stored bytes without false alarms from ciphertext."""

from __future__ import annotations

import re


def mentions(text: str, word: str) -> bool:
    """``word`` as a word of ``text``: not inside base64 ciphertext or a hex digest, where a
    few random characters spell a short code by chance ("I10": ~1 in 260,000 per position,
    "1958" in hex: 1 in 65,536)."""
    return re.search(rf"(?<![A-Za-z0-9+/]){re.escape(word)}(?![A-Za-z0-9+/])", text) is not None
