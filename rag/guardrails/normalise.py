"""Normalisation before any check, so an obfuscated attack is seen as plain text.

Unicode NFKC (fullwidth and styled letters become ASCII), invisible and zero-width characters removed, homoglyphs
(Cyrillic and Greek letters that look Latin) mapped to Latin. The result keeps a map back to the caller's offsets so
PII spans found in the normalised text are reported against the input. For detection only, obvious encodings are
decoded into extra readings: base64 and hex runs, rot13 of the whole text, leetspeak, and spaced-out letters
("i g n o r e"). Those readings are scanned by the rules but never passed on.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from dataclasses import dataclass

HOMOGLYPHS: dict[str, str] = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y",
    "х": "x", "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "ɡ": "g", "ԛ": "q", "ԝ": "w", "ӏ": "l",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "У": "Y",
    "Х": "X", "І": "I", "Ј": "J", "Ѕ": "S",
    # Greek
    "α": "a", "ο": "o", "ρ": "p", "ν": "v", "τ": "t", "ι": "i", "κ": "k", "υ": "u", "ε": "e",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P",
    "Τ": "T", "Υ": "Y", "Χ": "X",
}  # fmt: skip
"""Confusable letters (Unicode TR39 subset) that survive NFKC."""

_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"})
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")
_HEX_RUN = re.compile(r"\b(?:[0-9a-fA-F]{2}[\s:]?){8,}\b")
_SPACED = re.compile(r"\b(?:[A-Za-z][ .\-_*]){3,}[A-Za-z]\b")


@dataclass(frozen=True)
class Normalised:
    """The normalised text, the caller's offset of each of its characters, and the decoded readings."""

    text: str
    offsets: tuple[int, ...]
    """``offsets[i]`` is the index in the original text of normalised character ``i``; one extra entry = len."""
    decoded: tuple[str, ...]

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """Map ``[start, end)`` in the normalised text to the original text."""
        if start >= end:
            return self.offsets[start], self.offsets[start]
        return self.offsets[start], self.offsets[end - 1] + 1


def _invisible(char: str) -> bool:
    # Cf: zero-width space/joiners, BOM, bidi controls, tag characters; also variation selectors (Mn, but invisible)
    return unicodedata.category(char) == "Cf" or "\ufe00" <= char <= "\ufe0f"


def normalise(text: str, *, decode: bool = True) -> Normalised:
    """NFKC + invisible characters removed + homoglyphs mapped, with offsets; decoded readings when ``decode``."""
    if text.isascii():  # NFKC leaves ASCII as it is, and it holds no invisible, combining or confusable character
        return Normalised(text=text, offsets=tuple(range(len(text) + 1)), decoded=readings(text) if decode else ())
    plain, offsets = _fold(text)
    return Normalised(text=plain, offsets=offsets, decoded=readings(plain) if decode else ())


def _fold(text: str) -> tuple[str, tuple[int, ...]]:
    """The character-by-character fold of :func:`normalise` (any text; ASCII comes back as it is)."""
    pieces: list[str] = []
    offsets: list[int] = []
    index = 0
    while index < len(text):
        end = index + 1
        while end < len(text) and unicodedata.combining(text[end]):
            end += 1  # a base character with its combining marks composes as one cluster
        cluster = "".join(c for c in text[index:end] if not _invisible(c))
        if cluster:
            folded = unicodedata.normalize("NFKC", cluster)
            folded = "".join(HOMOGLYPHS.get(c, c) for c in folded if not _invisible(c))
            pieces.append(folded)
            offsets.extend([index] * len(folded))
        index = end
    offsets.append(len(text))
    return "".join(pieces), tuple(offsets)


def _printable(data: bytes) -> str | None:
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    letters = sum(c.isalpha() or c.isspace() for c in decoded)
    return decoded if decoded and letters / len(decoded) >= 0.8 else None


def readings(text: str) -> tuple[str, ...]:
    """Plain-text readings of obfuscated parts of ``text`` (for detection only; may be empty)."""
    found: list[str] = []
    for match in _BASE64_RUN.finditer(text):
        run = match.group(0)
        try:
            data = base64.b64decode(run + "=" * (-len(run) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        plain = _printable(data)
        if plain:
            found.append(plain)
    for match in _HEX_RUN.finditer(text):
        digits = re.sub(r"[\s:]", "", match.group(0))
        if len(digits) % 2 == 0:
            plain = _printable(bytes.fromhex(digits))
            if plain:
                found.append(plain)
    found.append(codecs.encode(text, "rot13"))
    leet = text.lower().translate(_LEET)
    if leet != text.lower():
        found.append(leet)
    spaced = _SPACED.sub(lambda m: re.sub(r"[ .\-_*]", "", m.group(0)), text)
    if spaced != text:
        found.append(spaced)
    return tuple(dict.fromkeys(found))
