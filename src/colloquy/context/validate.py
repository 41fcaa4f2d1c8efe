"""The API's conversation rules, checked (and repaired) before any request is sent.

Why repair rather than only refuse: a stored log can legitimately end up "unsendable" — a model
call failed after the user's message was stored (two user messages in a row), a process died
between a tool_use and its tool_result, a window cut left a reply at the front. The stored log is
never edited; the *request* built from it is repaired, and what could not be repaired is refused
with a clear error before a token is spent.

Rules (Anthropic's, which are also valid for OpenAI after conversion):
  1. the first message is from the user, and roles alternate;
  2. every tool_use is answered by a tool_result in the very next (user) message, and tool_result
     blocks come first in that message;
  3. no tool_result without its tool_use in the message just before;
  4. no empty message, no whitespace-only text block (system blocks included);
  5. tool-call ids match ``^[a-zA-Z0-9_-]{1,40}$`` and are unique in the request;
  6. at most 4 cache_control breakpoints in the request;
  7. a final assistant message (a prefill) does not end with whitespace;
  8. each block in a message of a role that may hold it (:func:`~colloquy.messages.misplaced`:
     thinking, tool_use and server tool blocks only in assistant messages, tool_result only in
     user messages). New content is refused at entry; a row stored before that rule (or
     restored from an old export) is left out of the request, with a note, and kept in the log;
  9. a base64 document is a PDF (Anthropic's ``Base64PDFSource``): a base64 ``text/*`` document
     (which colloquy takes, e.g. an OpenAI ``file`` part) is sent as a plain-text source of its
     decoded text (:meth:`~colloquy.messages.DocumentBlock.sendable`).
(Text is valid Unicode by construction: colloquy.text.)
Rules 4 (system), 5, 6 and 7 are the providers' own: see :mod:`colloquy.context.wire` for their
sources. :func:`repair_request` is the one place a request is made to obey them all.
"""

from __future__ import annotations

import threading
from operator import is_
from collections.abc import Sequence

from ..caches import text_memo
from ..errors import InvalidConversationError
from ..messages import ContentBlock, DocumentBlock, Message, TextBlock, ToolResultBlock, misplaced
from .wire import (
    MAX_BREAKPOINTS,
    count_breakpoints,
    limit_breakpoints,
    map_tool_ids,
    system_problems,
    tool_id_problems,
    trailing_whitespace,
    trim_final_assistant,
)

INTERRUPTED = "(no result: the tool call was interrupted before it returned)"


#: The request each thread last found plainly valid, as (system blocks, messages): every
#: request is checked twice in a row on one thread, by :func:`repair_request` then by
#: :func:`validate` (``Chat._request``), and the second check of the same blocks and messages
#: (the very objects: frozen values) is answered from here. Compared by identity only: a
#: compare by value cost more than the check itself (about 40 pydantic ``__eq__`` a turn when
#: the thread's last request was another conversation's with equal messages).
_LAST_VALID: dict[int, tuple[list[TextBlock], list[Message]]] = {}


_FORGETS = text_memo(_LAST_VALID.clear)  # it holds messages of any conversation: a deletion empties it


def _plainly_valid(messages: Sequence[Message], system: Sequence[TextBlock] = ()) -> bool:
    """The common case, checked in one cheap pass: text only, user first, roles alternating,
    no more breakpoints than allowed (``system``'s counted too), no trailing whitespace at the
    end of a prefill. Every request goes through it twice (repair, then validate), over the
    whole window, so it avoids copies (``isspace``, not ``strip``) and generator frames; the
    second time, on the same thread, is answered by :data:`_LAST_VALID`."""
    me = threading.get_ident()
    last = _LAST_VALID.get(me)
    if last is not None and _same(last[1], messages) and _same(last[0], system):
        return True
    if _check_plainly_valid(messages, system):
        if len(_LAST_VALID) >= 256:  # threads come and go: never more than a few hundred
            _LAST_VALID.clear()
        _LAST_VALID[me] = (list(system), list(messages))
        return True
    return False


def _same(a: Sequence[object], b: Sequence[object]) -> bool:
    """The same objects, in the same order."""
    return len(a) == len(b) and all(map(is_, a, b))


def _check_plainly_valid(messages: Sequence[Message], system: Sequence[TextBlock]) -> bool:
    expected = "user"
    marks = 0
    for s in system:
        if s.cache_control is not None:
            marks += 1
    for m in messages:
        if m.role != expected or not m.content:
            return False
        for b in m.content:
            if type(b) is not TextBlock:
                return False
            text = b.text
            if not text or text.isspace():
                return False
            if b.cache_control is not None:
                marks += 1
        expected = "assistant" if expected == "user" else "user"
    return bool(messages) and marks <= MAX_BREAKPOINTS and not trailing_whitespace(messages)


def problems(messages: Sequence[Message], system: Sequence[TextBlock] = ()) -> list[str]:
    """Every rule the request breaks, as readable sentences (empty if valid). ``system`` is the
    request's system blocks, checked for whitespace-only text and counted for breakpoints."""
    out: list[str] = system_problems(system)
    if not messages:
        return [*out, "the request has no messages"]
    if _plainly_valid(messages, system):
        return out
    breakpoints = count_breakpoints(system, messages)
    if breakpoints > MAX_BREAKPOINTS:
        out.append(f"the request has {breakpoints} cache_control breakpoints "
                   f"(at most {MAX_BREAKPOINTS})")
    if messages[0].role != "user":
        out.append("the first message is not from the user")
    for i, m in enumerate(messages):
        if not m.content:
            out.append(f"message {i} is empty")
        for b in m.content:
            if isinstance(b, TextBlock) and not b.text.strip():
                out.append(f"message {i} has an empty text block")
            if m.role == "user" and misplaced(b, m.role):
                out.append(f"message {i}: a {b.type} block in a user message")
            if isinstance(b, DocumentBlock) and b.base64_text:
                out.append(f"message {i}: a base64 document that is not a PDF")
            if isinstance(b, ToolResultBlock) and isinstance(b.content, list) and any(
                isinstance(p, TextBlock) and not p.text.strip() for p in b.content
            ):
                out.append(f"message {i} has an empty text block in a tool_result")
        if i and m.role == messages[i - 1].role:
            out.append(f"messages {i - 1} and {i} are both from the {m.role}")
        results = m.tool_results
        if results and m.role != "user":
            out.append(f"message {i}: tool_result blocks in an assistant message")
        n_leading = next(
            (k for k, b in enumerate(m.content) if not isinstance(b, ToolResultBlock)), len(m.content)
        )
        if len(results) > n_leading:
            out.append(f"message {i}: tool_result blocks must come first")
        asked = {b.id for b in messages[i - 1].tool_uses} if i else set()
        seen: set[str] = set()
        for r in results:
            if r.tool_use_id not in asked:
                out.append(f"message {i}: tool_result {r.tool_use_id} answers no tool_use")
            elif r.tool_use_id in seen:
                out.append(f"message {i}: tool_use {r.tool_use_id} has more than one tool_result")
            seen.add(r.tool_use_id)
        if m.role == "assistant" and m.tool_uses:
            answered = {r.tool_use_id for r in messages[i + 1].tool_results} if i + 1 < len(messages) else set()
            for u in m.tool_uses:
                if u.id not in answered:
                    out.append(f"message {i}: tool_use {u.id} ({u.name}) has no tool_result")
    out.extend(tool_id_problems(messages))
    if trailing_whitespace(messages):
        out.append(f"message {len(messages) - 1}: the final assistant message ends with whitespace")
    return out


def validate(messages: Sequence[Message], system: Sequence[TextBlock] = ()) -> None:
    """Raise :class:`InvalidConversationError` naming every broken rule."""
    found = problems(messages, system)
    if found:
        raise InvalidConversationError("request breaks the API's rules: " + "; ".join(found))


def _clean_block(b: ContentBlock) -> ContentBlock | None:
    """None for a whitespace-only text block; a tool_result without its whitespace-only parts;
    a base64 text document as plain text (rule 9), in a tool_result too."""
    if isinstance(b, TextBlock):
        return b if b.text.strip() else None
    if isinstance(b, DocumentBlock):
        return b.sendable()
    if isinstance(b, ToolResultBlock) and isinstance(b.content, list):
        parts = [p.sendable() if isinstance(p, DocumentBlock) else p for p in b.content
                 if not (isinstance(p, TextBlock) and not p.text.strip())]
        if parts != b.content:
            return b.model_copy(update={"content": parts})
    return b


def _clean(m: Message) -> Message | None:
    blocks = [c for c in (_clean_block(b) for b in m.content) if c is not None]
    if not blocks:
        return None
    results = [b for b in blocks if isinstance(b, ToolResultBlock)]
    others = [b for b in blocks if not isinstance(b, ToolResultBlock)]
    ordered: list[ContentBlock] = [*results, *others] if m.role == "user" else [*others]
    if not ordered:
        return None
    return m if ordered == m.content else Message.rebuilt(m.role, ordered)


def _merge_pass(
    msgs: list[Message], srcs: list[list[int]], notes: list[str]
) -> tuple[list[Message], list[list[int]]]:
    """Drop empty blocks and messages and leading assistant messages; merge same-role runs."""
    out: list[Message] = []
    out_srcs: list[list[int]] = []
    for m, s in zip(msgs, srcs):
        cleaned = _clean(m)
        if cleaned is None:
            notes.append("dropped an empty message")
        elif not out and cleaned.role == "assistant":
            notes.append("dropped an assistant message at the start")
        elif out and out[-1].role == cleaned.role:
            notes.append(f"merged consecutive {cleaned.role} messages")
            merged = _clean(Message.rebuilt(cleaned.role, [*out[-1].content, *cleaned.content]))
            assert merged is not None  # both parts were non-empty
            out[-1] = merged
            out_srcs[-1] = out_srcs[-1] + s
        else:
            out.append(cleaned)
            out_srcs.append(list(s))
    return out, out_srcs


def _placement_pass(msgs: list[Message], notes: list[str]) -> list[Message]:
    """Each message without the blocks its role may not hold (rule 8): a row stored before the
    entry rules, or restored from an old export, would otherwise fail every later turn. Left
    out, not moved: a thinking block in a user message is no answer of the model's, a
    tool_result in an assistant message answers no call the request can show."""
    out: list[Message] = []
    for m in msgs:
        dropped = [b for b in m.content if misplaced(b, m.role)]
        if dropped:
            where, only = ("an assistant", "a user") if m.role == "assistant" else (
                "a user", "an assistant")
            for kind in dict.fromkeys(str(b.type) for b in dropped):
                notes.append(f"left a {kind} block stored in {where} message out of the request "
                             f"(the API takes it only in {only} message; the log keeps it)")
            m = Message.rebuilt(m.role, [b for b in m.content if not misplaced(b, m.role)])
        out.append(m)  # (an emptied message is dropped by the merge pass)
    return out


def _orphan_pass(
    msgs: list[Message], srcs: list[list[int]], notes: list[str]
) -> tuple[list[Message], list[list[int]], bool]:
    """Drop tool_results that do not answer a tool_use of the message just before."""
    out: list[Message] = []
    out_srcs: list[list[int]] = []
    changed = False
    for i, (m, s) in enumerate(zip(msgs, srcs)):
        if m.role == "user" and m.tool_results:
            asked = {b.id for b in msgs[i - 1].tool_uses} if i else set()
            kept = [b for b in m.content if not isinstance(b, ToolResultBlock) or b.tool_use_id in asked]
            if len(kept) != len(m.content):
                notes.append("dropped tool results that answer no tool call")
                changed = True
                if not kept:
                    continue
                m = Message.rebuilt("user", kept)
        out.append(m)
        out_srcs.append(s)
    return out, out_srcs, changed


def _answer_every_call(msgs: list[Message], srcs: list[list[int]], notes: list[str]) -> None:
    """In place: every tool_use answered exactly once, in the next message. An unanswered call
    (a process died before its result, a reply cut mid-call, an import that names one id twice)
    gets an is_error result saying it was interrupted; a second result for one call is dropped
    (Anthropic: "each tool_use must have a single result")."""
    for i, m in enumerate(list(msgs)):
        if m.role != "assistant" or not m.tool_uses:
            continue
        nxt = msgs[i + 1] if i + 1 < len(msgs) else None
        results: list[ToolResultBlock] = []
        answered: set[str] = set()
        asked = {u.id for u in m.tool_uses}
        for r in nxt.tool_results if nxt else []:
            if r.tool_use_id in answered or r.tool_use_id not in asked:
                notes.append("dropped a second result of one tool call")
                continue
            answered.add(r.tool_use_id)
            results.append(r)
        missing = [u for u in m.tool_uses if u.id not in answered]
        if missing:
            notes.append("answered interrupted tool calls with an error result")
        elif nxt is None or len(results) == len(nxt.tool_results):
            continue
        fill: list[ContentBlock] = [
            ToolResultBlock(tool_use_id=u.id, content=INTERRUPTED, is_error=True) for u in missing
        ]
        if nxt is None:
            msgs.append(Message.rebuilt("user", fill))
            srcs.append([])
        else:
            rest = [b for b in nxt.content if not isinstance(b, ToolResultBlock)]
            msgs[i + 1] = Message.rebuilt("user", [*results, *fill, *rest])


def repair(
    messages: Sequence[Message], sources: Sequence[list[int]] | None = None
) -> tuple[list[Message], list[list[int]], list[str]]:
    """Make a message list sendable without inventing content.

    Returns the repaired messages, their merged source sequence numbers, and one note per kind
    of repair done. Repairs: leave out blocks stored in a role that may not hold them (rule
    8); drop empty blocks and messages; drop leading assistant messages;
    merge consecutive messages of one role; drop tool_results that answer nothing; answer an
    unanswered tool_use with an is_error result saying the call was interrupted; give tool
    calls ids every provider accepts (:func:`~colloquy.context.wire.map_tool_ids`); strip
    trailing whitespace from a final assistant message.
    """
    msgs = list(messages)
    srcs = [list(s) for s in sources] if sources is not None else [[] for _ in msgs]
    if _plainly_valid(msgs):
        return msgs, srcs, []
    notes: list[str] = []
    msgs = _placement_pass(msgs, notes)
    changed = True
    while changed:  # each round removes something, so this ends
        msgs, srcs = _merge_pass(msgs, srcs, notes)
        msgs, srcs, changed = _orphan_pass(msgs, srcs, notes)

    msgs, remapped = map_tool_ids(msgs)  # first: the pairing below needs unique ids
    if remapped:
        notes.append("gave tool calls ids every provider accepts (the log keeps the originals)")
    _answer_every_call(msgs, srcs, notes)
    if trim_final_assistant(msgs):
        notes.append("stripped trailing whitespace from the final assistant message")
    return msgs, srcs, list(dict.fromkeys(notes))


def repair_request(
    system: Sequence[TextBlock], messages: Sequence[Message], sources: Sequence[list[int]] | None = None
) -> tuple[list[TextBlock], list[Message], list[list[int]], list[str]]:
    """:func:`repair` for a whole request: also drops whitespace-only system blocks and keeps
    only the latest
    :data:`~colloquy.context.wire.MAX_BREAKPOINTS` cache breakpoints.

    Returns (system, messages, sources, notes), the sources as new lists. Every request colloquy
    sends goes through this (``Chat.build_context``), whatever the policy and the adapter.
    """
    return _repair_request(system, messages, sources, owned=False)


def repair_owned_request(
    system: Sequence[TextBlock], messages: Sequence[Message], sources: Sequence[list[int]]
) -> tuple[list[TextBlock], list[Message], list[list[int]], list[str]]:
    """:func:`repair_request` for ``sources`` the caller owns (lists nobody else holds, as
    :func:`~colloquy.context.thinking.replay_thinking` returns them): a request with nothing to
    repair hands those lists back instead of copies (``Chat.build_context``, every turn: they
    were copied once already)."""
    return _repair_request(system, messages, sources, owned=True)


def _repair_request(
    system: Sequence[TextBlock], messages: Sequence[Message], sources: Sequence[list[int]] | None,
    owned: bool,
) -> tuple[list[TextBlock], list[Message], list[list[int]], list[str]]:
    if _plainly_valid(messages, system) and not system_problems(system):
        if sources is None:
            srcs: list[list[int]] = [[] for _ in messages]
        else:
            srcs = list(sources) if owned else [list(s) for s in sources]
        return list(system), list(messages), srcs, []
    msgs, srcs, notes = repair(messages, sources)
    kept = [b for b in system if b.text.strip()]
    if len(kept) != len(system):
        notes.append("dropped a whitespace-only system block")
    kept, msgs, limited = limit_breakpoints(kept, msgs)
    if limited:
        notes.append(f"kept the latest {MAX_BREAKPOINTS} cache breakpoints of the request")
    return kept, msgs, srcs, notes
