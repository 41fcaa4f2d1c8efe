"""The text rules, decided once: what colloquy accepts as text, and how conversation text is
quoted when colloquy wraps it in a prompt block.

**Characters no store or provider can carry are replaced by U+FFFD** (the replacement
character, what decoding bad UTF-8 with ``errors="replace"`` gives). Two kinds exist:

* lone surrogates (U+D800-U+DFFF): a JSON ``"\\ud83d"`` escape decodes to one, and so does an
  invalid UTF-8 byte read under a C locale (``surrogateescape``). They cannot be encoded as
  UTF-8, so the provider's request, SQLite's text columns and every JSON export fail on them;
* NUL (U+0000): PostgreSQL refuses it in ``text`` and as ``\\u0000`` in ``jsonb``.

Replaced, not refused: a message from a lossy pipe or a broken client is still worth keeping,
and the U+FFFD shows where the damage was. A valid surrogate *pair* becomes the character it
encodes. Where: :func:`clean` runs in the pydantic validators of every value type that carries
text (content blocks and tool inputs, messages' meta, conversations, facts, summaries), so every
construction path is covered, reading rows stored before this rule included; bytes are decoded
with ``errors="replace"`` where they enter (the CLI's stdin, import files).

**Blank content is refused** where new content is accepted (a user's message, a fact's
statement, a title, a user id that owns something) by :func:`require_text`, with one error class,
:class:`~colloquy.errors.InvalidTextError` (a ``ValueError`` too; HTTP 422, a one-line CLI
error). Reading stored data never refuses. *Blank* (:func:`is_blank`) means nothing but
whitespace (``str.isspace``: U+3000, U+2028, ...) and invisible format characters, Unicode
general category ``Cf`` as ``unicodedata`` reports it (zero-width space U+200B, ZWNJ/ZWJ
U+200C-U+200D, word joiner U+2060, BOM U+FEFF, soft hyphen U+00AD, bidi marks): text made of
them shows as nothing, so it is no more a message than spaces are. A Cf character *inside*
visible text is kept (ZWJ emoji sequences, Persian ZWNJ). A blank persona means "no persona"
(:func:`clean_persona`): a ``--system "$PERSONA"`` with an empty variable, or an OpenAI client's
blank system message, should not fail a chat, and Anthropic refuses a blank system block.

**Conversation text inside a prompt block is data** (:func:`as_data`, and :func:`quoted`, its
JSON-literal form for one-line records such as facts): every block colloquy builds around user,
model or tool text (summaries, recalled excerpts, facts, pruned tool output, the summariser's,
extractor's, title's, topic judge's and eval judge's inputs) passes the text through this one
helper, so it can neither close its block nor open a tag of its own, and, in line-structured
blocks, cannot start a line that poses as the block's own structure (``assistant: ...``,
``SYSTEM: ...``).

Cost: the common case (nothing to replace) is two C-speed scans of the string, so validating
every text of a turn stays far below a millisecond (bench/turns.py).
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Annotated, Any

from pydantic import AfterValidator

from .errors import InvalidTextError

REPLACEMENT = "\ufffd"
#: JSON escapes of NUL and surrogates, as stored in JSON text columns by ``json.dumps``.
_BAD_ESCAPE = re.compile(r"\\u(?:0000|[dD][89abcdefABCDEF][0-9a-fA-F]{2})")


def clean(text: str) -> str:
    """``text`` with lone surrogates and NUL replaced by U+FFFD (the same object when there is
    nothing to replace). Valid surrogate pairs become the character they encode."""
    if text.isascii():  # O(1) in CPython: a flag of the string
        return text if "\x00" not in text else text.replace("\x00", REPLACEMENT)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Pairs join into one character; what is left alone becomes U+FFFD.
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text if "\x00" not in text else text.replace("\x00", REPLACEMENT)


#: Values :func:`clean_json` returns as they are, told by their exact type without a call: a
#: stored value can hold lists of hundreds of numbers (replies stored before context/seen.py's
#: record v2 listed their recalled seqs so), validated on every append.
_ATOMIC = frozenset({int, float, bool, type(None)})


def clean_json(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings, numbers) with every string, keys included,
    passed through :func:`clean`. Returns the same object when nothing changed (and each
    unchanged container inside it). Iterative: a value of any depth (a stored row from before
    the depth rule, a hostile body) costs no recursion."""
    if isinstance(value, str):
        return clean(value)
    if not isinstance(value, (dict, list, tuple)):
        return value
    try:  # every value the body and block rules let in is shallower: the fast way
        return _clean_nested(value, _NESTED_LEVELS)
    except _TooDeep:
        return _clean_deep(value)


#: The nesting :func:`_clean_nested` takes by recursion (MAX_BODY_DEPTH is 128).
_NESTED_LEVELS = 200


class _TooDeep(Exception):
    pass


def _clean_nested(value: Any, levels: int) -> Any:
    """:func:`clean_json` by recursion, ``levels`` deep at most (else :class:`_TooDeep`):
    about 1.5 times faster than :func:`_clean_deep` on a reply's meta (hundreds of numbers)."""
    if isinstance(value, str):
        return clean(value)
    if not levels:
        raise _TooDeep
    if isinstance(value, dict):
        out: dict[Any, Any] | None = None
        for i, (k, v) in enumerate(value.items()):
            ck = clean(k) if isinstance(k, str) else k
            cv = v if type(v) in _ATOMIC else _clean_nested(v, levels - 1)
            if out is None and (ck is not k or cv is not v):
                out = dict(list(value.items())[:i])
            if out is not None:
                out[ck] = cv
        return value if out is None else out
    if isinstance(value, (list, tuple)):
        items: list[Any] | None = None
        for i, v in enumerate(value):
            if type(v) in _ATOMIC:
                continue
            cv = _clean_nested(v, levels - 1)
            if cv is not v:
                if items is None:
                    items = list(value)
                items[i] = cv
        return value if items is None else type(value)(items)
    return value


def _clean_deep(value: Any) -> Any:
    """:func:`clean_json` without recursion, for a value of any depth."""
    # One frame per open container: [container, its enumerated entries, the cleaned entries so
    # far (None while nothing changed), the child container being cleaned (index, key, cleaned
    # key, child) or None]. A dict's entries are (key, value) pairs.
    stack: list[list[Any]] = [_frame(value)]
    done: Any = None
    while stack:
        frame = stack[-1]
        container, entries, out, pending = frame
        is_dict = isinstance(container, dict)
        if pending is not None:  # the child just cleaned is `done`
            i, k, ck, v = pending
            frame[3] = None
            if out is None and (ck is not k or done is not v):
                out = frame[2] = _prefix(container, i)
            if out is not None:
                out.append((ck, done) if is_dict else done)
        for i, entry in entries:
            if is_dict:
                k, v = entry
                ck = clean(k) if isinstance(k, str) else k
            else:
                k = ck = None
                v = entry
            if type(v) in _ATOMIC:
                cv = v
            elif isinstance(v, str):
                cv = clean(v)
            elif isinstance(v, (dict, list, tuple)):
                frame[3] = (i, k, ck, v)
                stack.append(_frame(v))
                break
            else:
                cv = v
            if out is None and (ck is not k or cv is not v):
                out = frame[2] = _prefix(container, i)
            if out is not None:
                out.append((ck, cv) if is_dict else cv)
        else:
            stack.pop()
            done = container if out is None else (
                dict(out) if is_dict else type(container)(out))
    return done


def _frame(container: Any) -> list[Any]:
    entries = container.items() if isinstance(container, dict) else container
    return [container, enumerate(entries), None, None]


def _prefix(container: Any, i: int) -> list[Any]:
    """The first ``i`` entries of a container, unchanged: where its cleaned copy starts."""
    if isinstance(container, dict):
        return list(container.items())[:i]
    return list(container[:i])


def clean_json_text(text: str) -> str:
    """A string that may be JSON text (a store's ``content`` or ``meta`` column): its escaped
    NUL and lone surrogates are replaced too, so a parser of it gets clean text. Used on raw
    rows by export and import, which do not go through the value types."""
    text = clean(text)
    if not _BAD_ESCAPE.search(text):
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return json.dumps(clean_json(value))


def is_blank(text: str) -> bool:
    """True when ``text`` shows nothing: only whitespace and format (``Cf``) characters, or
    empty. Cost: stops at the first visible character (one ``strip`` for ASCII text)."""
    rest = text.strip()
    if not rest:
        return True
    if rest.isascii():  # no ASCII character is Cf
        return False
    return all(c.isspace() or unicodedata.category(c) == "Cf" for c in rest)


def require_text(text: str, what: str) -> str:
    """``text`` cleaned; :class:`InvalidTextError` ("``what`` is empty") when it is blank
    (:func:`is_blank`). ``what`` names the value: ``"the message"``, ``"the title"``."""
    text = clean(text)
    if is_blank(text):
        raise InvalidTextError(f"{what} is empty")
    return text


#: Names a URL path cannot carry: ``.`` and ``..`` are removed from every path by URL parsers
#: (browsers, curl; RFC 3986 5.2.4 "remove_dot_segments", WHATWG URL: also ``%2e``), and a
#: ``/`` separates path segments (servers decode ``%2F`` before routing).
_PATHLESS_NAMES = frozenset({".", ".."})


def require_name(name: str, what: str = "the conversation name") -> str:
    """``name`` cleaned, when a URL path can carry it as one segment
    (``/v1/conversations/{name}``); :class:`InvalidTextError` otherwise: blank, ``.`` or
    ``..``, or holding ``/``. Applied where a new name is stored (every store's
    ``create_conversation``, imports); a stored older name still reads."""
    name = require_text(name, what)
    if name in _PATHLESS_NAMES or "/" in name:
        raise InvalidTextError(f"{what} {name!r} cannot be used: a URL path cannot carry "
                               "'.', '..' or a name with '/'")
    return name


_SURROGATE = re.compile("[\ud800-\udfff]")


def name_argument(value: str) -> str:
    """An ``argparse`` type for a name or an id given on the command line (a session, a user):
    the argument as given, or an error naming the bytes when it is not valid UTF-8. Python
    reads such bytes as lone surrogates (``surrogateescape``), which the text rule makes
    U+FFFD: ``--session $'\\xff'`` and ``--session $'\\xfe'`` would be one conversation."""
    if not _SURROGATE.search(value):
        return value
    import argparse

    shown = "".join(f"\\x{ord(c) - 0xDC00:02x}" if "\udc80" <= c <= "\udcff"
                    else f"\\u{ord(c):04x}" if _SURROGATE.match(c) else c for c in value)
    raise argparse.ArgumentTypeError(
        f"'{shown}' is not valid UTF-8 (names are text: give this one in UTF-8)")


def clean_or_empty(text: str) -> str:
    """``text`` cleaned, and ``""`` (none) when blank: for values where blank means "not set"
    (a stored conversation's model)."""
    text = clean(text)
    return "" if is_blank(text) else text


def clean_persona(text: str) -> str:
    """A persona (system prompt): cleaned, and ``""`` (no persona) when blank."""
    return clean_or_empty(text)


def clean_title(text: str | None) -> str | None:
    """A stored title: cleaned, and None (untitled, so the next turn titles it) when blank."""
    if text is None:
        return None
    text = clean(text)
    return None if is_blank(text) else text


#: A string field that follows the character rule (pydantic).
Text = Annotated[str, AfterValidator(clean)]
#: A dict field whose strings follow the character rule (tool input, meta).
JSONDict = Annotated[dict[str, Any], AfterValidator(clean_json)]


# -- conversation text inside prompt blocks ------------------------------------------------------

_ANGLE = str.maketrans({"<": "&lt;", ">": "&gt;"})


def as_data(text: str, *, one_line: bool = False) -> str:
    """Conversation or tool text made safe to place inside a delimited block of a prompt.

    ``<`` and ``>`` become ``&lt;`` and ``&gt;``, so the text can neither close the block it
    sits in (``</conversation_summary>``) nor open a tag that poses as one of colloquy's
    (models read the entities as the characters). Idempotent: text escaped once (a stored
    summary of escaped transcripts) is not escaped twice. With ``one_line``, every run of
    whitespace, newlines included, becomes one space, for blocks whose lines carry structure
    (``[#12 user] ...``, ``user: ...``): the text cannot start a line of its own there.
    """
    text = clean(text)
    if one_line:
        text = " ".join(text.split())
    return text.translate(_ANGLE) if ("<" in text or ">" in text) else text


def quoted(text: str) -> str:
    """:func:`as_data` for one-line records (facts): the text as a JSON string literal, whose
    ``<`` and ``>`` are written ``\\u003c`` and ``\\u003e`` and newlines ``\\n``, so it can
    neither close a tag nor start a line, and JSON-decoding it gives the exact text back."""
    return json.dumps(clean(text), ensure_ascii=False).replace("<", "\\u003c").replace(
        ">", "\\u003e")


__all__ = [
    "REPLACEMENT",
    "JSONDict",
    "Text",
    "as_data",
    "clean",
    "clean_json",
    "clean_json_text",
    "clean_or_empty",
    "clean_persona",
    "clean_title",
    "is_blank",
    "name_argument",
    "quoted",
    "require_text",
]
