"""The one check for short user text (concept names, class nouns, identifiers, labels, prompts).

Letters of any script, digits, spaces, marks, emoji and punctuation pass. Refused: control characters (line
breaks, tabs, NUL), invisible formatting characters (bidirectional overrides and isolates, zero-width spaces,
word joiners), line/paragraph separators, private-use, surrogate and unassigned code points, and the Hangul
filler letters, which draw nothing. They are refused,
not stripped, because they let a name look like another one or break the one-line messages and file listings
that show it. Two exceptions keep real text working: the zero-width joiner and non-joiner (U+200D, U+200C)
between two non-ASCII characters (emoji ZWJ sequences such as a family emoji, Persian and Indic words), and tag
characters after a black flag (the flags of England, Scotland and Wales).

`name_key` is the one rule for when two names are the same (concept names in a library, in prompts, in box labels):
names a person cannot tell apart on screen share a key.
"""

from __future__ import annotations

import re
import unicodedata

from .errors import PACGenError

_REFUSED_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"}
_JOINERS = {"\u200c", "\u200d"}
# Hangul fillers (letters by category) and the blank Braille pattern (a symbol): drawn as nothing
_BLANK_LETTERS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}
_BLACK_FLAG = "\U0001F3F4"
_NAMES = {"\n": "a line break", "\r": "a carriage return", "\t": "a tab", "\0": "a NUL character",
          "\u202e": "a right-to-left override", "\u202d": "a left-to-right override"}


def _is_tag(char: str) -> bool:
    return "\U000E0020" <= char <= "\U000E007F"


def _allowed_format(text: str, index: int) -> bool:
    """A joiner inside a word or emoji sequence, or a tag character of a flag: formatting that is part of text."""
    char = text[index]
    before = text[index - 1] if index > 0 else ""
    after = text[index + 1] if index + 1 < len(text) else ""
    if char in _JOINERS:
        return bool(before and after) and not (before.isascii() or after.isascii() or before.isspace()
                                               or after.isspace() or before in _JOINERS or after in _JOINERS)
    return _is_tag(char) and (before == _BLACK_FLAG or _is_tag(before))


def describe(char: str) -> str:
    """How a message names a character: 'a line break (U+000A)', 'the character ZERO WIDTH SPACE (U+200B)'."""
    code = f"U+{ord(char):04X}"
    if char in _NAMES:
        return f"{_NAMES[char]} ({code})"
    name = unicodedata.name(char, "")
    if name:
        return f"the character {name} ({code})"
    unnamed = {"Cc": "a control character", "Cs": "a lone surrogate"}
    return f"{unnamed.get(unicodedata.category(char), 'an unassigned or private-use character')} ({code})"


def check_text(field: str, value: object, max_len: int, error: type[PACGenError] = PACGenError) -> str:
    """`value` unchanged if it is text of at most `max_len` characters with no control or invisible formatting
    character; else `error` with a one-line message that starts with `field` (e.g. 'the concept name')."""
    if not isinstance(value, str):
        raise error(f"{field} must be text, got {type(value).__name__}")
    if len(value) > max_len:
        raise error(f"{field} is {len(value)} characters long; the limit is {max_len}")
    for index, char in enumerate(value):
        if char in _BLANK_LETTERS or (unicodedata.category(char) in _REFUSED_CATEGORIES
                                      and not _allowed_format(value, index)):
            raise error(f"{field} contains {describe(char)}; use letters, digits, spaces, emoji and punctuation, "
                        "without control or invisible formatting characters")
    return value


# Typographic forms NFKC keeps apart from the plain ones they look like: quotes, apostrophes, dashes.
_LOOKALIKES = str.maketrans({**dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u02bc\u02b9\u00b4`", "'"),
                             **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb\u02ba", '"'),
                             **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u2043\ufe63", "-"),
                             "\u0131": "i"})  # dotless i: İstanbul, Istanbul, istanbul and ıstanbul are one name
_VARIATION_SELECTORS = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]")


def name_key(text: str) -> str:
    """What two names share when a person cannot tell them apart: compatibility forms (NFKC), case (casefold, with
    İ and ı as i), emoji variation selectors, typographic quotes, apostrophes and dashes, and runs of spaces
    are all the same. Every comparison of concept names goes through this key."""
    key = unicodedata.normalize("NFKC", text).casefold().replace("i\u0307", "i")  # casefold('İ') is i + a dot
    key = _VARIATION_SELECTORS.sub("", key.translate(_LOOKALIKES))
    return " ".join(unicodedata.normalize("NFKC", key).split())


def has_visible_base(text: str) -> bool:
    """Whether the text holds a character drawn on its own (a letter, digit or symbol such as an emoji), not only
    combining marks, punctuation and spaces."""
    return any(unicodedata.category(char)[0] in "LNS" for char in text)
