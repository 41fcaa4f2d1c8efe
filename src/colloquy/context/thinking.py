"""Extended thinking in the request: which thinking blocks are replayed, and whether thinking
can be asked for on this call.

Anthropic's rules (the extended-thinking page, "Preserving thinking blocks" and "Toggling
thinking modes"; the API answers 400 when they are broken):

* inside a tool loop (the model asked for a tool, the request sends its result back) the
  thinking and redacted_thinking blocks of the assistant messages of the loop go back complete
  and unmodified, in their order: they are never edited, cut or marked for caching here;
* the thinking blocks of earlier, finished turns may be left out (models before Claude Opus
  4.5 / Sonnet 4.6 strip them anyway, and they are billed as input when sent): colloquy leaves
  them out, for every provider;
* with thinking on, the assistant message a tool loop continues must *start* with a thinking
  block: a loop that began with thinking off (or on another provider) cannot be continued with
  thinking on, so thinking is turned off for that call, with a note;
* with thinking off, no thinking block is sent at all (the API refuses one in a final assistant
  message, and the model cannot use them).

The stored log keeps every block: only the request is shaped here.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence

from ..caches import text_memo
from ..messages import THINKING_BLOCKS, ContentBlock, Message, StoredMessage, TextBlock

#: Anthropic's smallest thinking budget (``thinking.budget_tokens``).
MIN_BUDGET = 1024
#: The largest budget colloquy accepts, everywhere (CLI, HTTP bodies, library): above any
#: model's output limit (Claude's largest is 128,000 tokens), so a budget past it is a typo.
MAX_BUDGET = 200_000


def check_budget(budget: int | None) -> int | None:
    """``budget`` as a thinking budget: None or 0 (off), else at least :data:`MIN_BUDGET`
    tokens (the API's own lower bound) and at most :data:`MAX_BUDGET`; :class:`ValueError`
    otherwise."""
    if not budget:
        return None
    if budget < MIN_BUDGET:
        raise ValueError(f"a thinking budget is at least {MIN_BUDGET} tokens, not {budget}")
    if budget > MAX_BUDGET:
        raise ValueError(f"a thinking budget is at most {MAX_BUDGET} tokens, not {budget}")
    return int(budget)


def _vanishes(m: Message) -> bool:
    """True for a message the request leaves out: an assistant message of nothing but thinking
    (a reply cut off while thinking) or blank text, a user message of nothing but blank text
    (stored before the entry rules, or imported: the repair drops blank text blocks, and the
    messages around it then merge)."""
    for b in m.content:
        if m.role == "assistant" and isinstance(b, THINKING_BLOCKS):
            continue
        if isinstance(b, TextBlock) and not b.text.strip():
            continue
        return False
    return True


def loop_start(n: int, at: Callable[[int], Message]) -> int:
    """Index of the message that starts the current tool loop, as the API sees the request.

    ``at(i)`` is message ``i`` of ``n`` (raw, before the repair merges anything). The API
    reads the request after the repair: consecutive user messages are one, an assistant message
    left with nothing is gone, and the user message after an assistant's tool_use holds its
    tool_result blocks (stored, or the repair's "interrupted" ones). Such a user message
    continues the tool loop even when it also carries the user's own words (a reply cut by
    max_tokens in the middle of a tool call, then a new message): the loop starts at the last
    user message whose merged run follows no tool_use. Walks back from the end only as far as
    the current loop.
    """
    i = n - 1
    while i >= 0:
        while i >= 0 and not (at(i).role == "user" and at(i).starts_turn
                              and not _vanishes(at(i))):
            i -= 1
        if i < 0:
            return 0
        j = i  # the user's own words; walk back over what merges with them
        k = i - 1
        while k >= 0 and (at(k).role == "user" or _vanishes(at(k))):
            k -= 1
        asks = False  # the assistant messages before them merge into one too
        while k >= 0 and (at(k).role == "assistant" or _vanishes(at(k))):
            asks = asks or bool(at(k).tool_uses)
            k -= 1
        if not asks or k < 0:  # no call to answer (or dropped: the request starts with it)
            return j
        i = k  # the run answers those calls: the loop began earlier
    return 0


def _loop_start(messages: Sequence[Message]) -> int:
    return loop_start(len(messages), messages.__getitem__)


def _without_thinking(m: Message) -> Message | None:
    kept: list[ContentBlock] = [b for b in m.content if not isinstance(b, THINKING_BLOCKS)]
    if len(kept) == len(m.content):
        return m
    return Message.rebuilt(m.role, kept) if kept else None


def _strip(messages: Sequence[Message], sources: Sequence[list[int]]
           ) -> tuple[list[Message], list[list[int]]]:
    out: list[Message] = []
    out_sources: list[list[int]] = []
    for m, s in zip(messages, sources):
        kept = _without_thinking(m) if m.role == "assistant" else m
        if kept is not None:
            out.append(kept)
            out_sources.append(list(s))
    return out, out_sources


_MEMO: dict[int, tuple[StoredMessage, StoredMessage | None]] = {}
_MEMO_MAX = 8_192
_FORGETS = text_memo(_MEMO.clear)  # it holds messages of any conversation: a deletion empties it


def _stripped(sm: StoredMessage) -> StoredMessage | None:
    """``sm`` without its thinking blocks (None when nothing else is left), memoised by
    identity (the engine hands the same objects every turn)."""
    hit = _MEMO.get(id(sm))
    if hit is None or hit[0] is not sm:
        stripped = _without_thinking(sm.message)
        hit = (sm, None if stripped is None else sm.model_copy(update={"message": stripped}))
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.clear()
        _MEMO[id(sm)] = hit
    return hit[1]


def _holds_thinking(sm: StoredMessage) -> bool:
    m = sm.message
    if m.role != "assistant":
        return False
    for b in m.content:  # a loop, not any(): called once for every message of the log
        if isinstance(b, THINKING_BLOCKS):
            return True
    return False


class FinishedTurns:
    """:func:`finished_turns_without_thinking`, incremental over the engine's own log list.

    Scans only what it has not seen of the list object it was last given (a
    :class:`colloquy.Chat` keeps one list and extends it), remembering where the assistant
    messages that hold thinking are; another list is scanned whole. Why: a scan of the whole
    log on every turn took ~0.1 s per turn at 10,000 turns under a profiler (bench/turns.py);
    now a turn costs what it adds, and a log without thinking is handed on as it is.
    """

    def __init__(self) -> None:
        self._scanned: tuple[list[StoredMessage] | None, int] = (None, 0)  # (log list, scanned)
        #: Indices (in the scanned list) of assistant messages holding thinking blocks.
        self._thinking: list[int] = []

    def __call__(self, history: Sequence[StoredMessage]) -> Sequence[StoredMessage]:
        if not isinstance(history, list):
            history = list(history)
        seen, upto = self._scanned
        if seen is not history or upto > len(history):
            self._thinking = []
            upto = 0
        found = self._thinking
        for i in range(upto, len(history)):
            if _holds_thinking(history[i]):
                found.append(i)
        self._scanned = (history, len(history))
        start = loop_start(len(history), lambda i: history[i].message)
        cut = bisect_left(found, max(start, 0))
        if cut == 0:
            return history
        out: list[StoredMessage] = []
        prev = 0
        for i in found[:cut]:
            out.extend(history[prev:i])
            kept = _stripped(history[i])
            if kept is not None:
                out.append(kept)
            prev = i + 1
        out.extend(history[prev:])
        return out


def finished_turns_without_thinking(history: Sequence[StoredMessage]) -> list[StoredMessage]:
    """The log as context policies see it: thinking blocks left out of the turns before the
    current one (they are not sent, so they must not take a policy's budget or reach a
    summary). A stored reply is stripped once (memoised by identity, like token estimates):
    the engine hands the same objects every turn (and keeps a :class:`FinishedTurns`, which
    scans only the messages it has not seen). An assistant message that held only thinking
    (a reply cut off while thinking) is left out."""
    return list(FinishedTurns()(history))


def replay_thinking(
    messages: Sequence[Message], budget: int | None, sources: Sequence[list[int]] | None = None,
) -> tuple[list[Message], list[list[int]], int | None, list[str]]:
    """Apply the rules above to a context's messages.

    Returns the messages to send, their source sequence numbers (parallel to ``sources``), the
    thinking budget this call may use (``budget`` or None) and notes. An assistant message left
    with nothing (only thinking: a reply cut off while thinking) is dropped with its sources,
    inside the loop too (its half thought has no signature worth replaying, and the API reads
    the user messages around it as one); the caller's repair step then merges what that leaves
    adjacent.
    """
    srcs = [list(s) for s in sources] if sources is not None else [[] for _ in messages]
    if not any(isinstance(b, THINKING_BLOCKS) for m in messages if m.role == "assistant"
               for b in m.content):
        if budget and _continues_without_thinking(messages, _loop_start(messages)):
            return list(messages), srcs, None, [OFF_NOTE]
        return list(messages), srcs, budget, []
    keep = [i for i, m in enumerate(messages) if not _vanishes(m) or i == len(messages) - 1]
    if len(keep) != len(messages):
        messages = [messages[i] for i in keep]
        srcs = [srcs[i] for i in keep]
    start = _loop_start(messages)
    notes: list[str] = []
    if budget and _continues_without_thinking(messages, start):
        budget = None
        notes.append(OFF_NOTE)
    if not budget:
        start = len(messages)  # thinking off: no thinking block is sent at all
    head, head_srcs = _strip(messages[:start], srcs[:start])
    return [*head, *messages[start:]], [*head_srcs, *srcs[start:]], budget, notes


OFF_NOTE = ("thinking off for this call: the tool loop it continues began without thinking "
             "(the API needs that loop's thinking block first)")


def thinking_off_after_repair(messages: Sequence[Message], budget: int | None) -> bool:
    """True when a *repaired* request (roles alternate, every tool_use answered) asks for
    thinking but continues a tool loop whose assistant message does not start with a thinking
    block: :func:`replay_thinking` decides on the messages before the repair, and what the repair
    drops (a blank or orphan-only message, stored before the entry rules or imported) can merge
    two assistant messages into one that starts with something else. The caller then sends the
    request with thinking off (found by tests/test_repair_fuzz.py)."""
    return bool(budget) and _continues_without_thinking(messages, _loop_start(messages))


def _continues_without_thinking(messages: Sequence[Message], start: int) -> bool:
    """True when the request continues a tool loop whose last assistant message does not start
    with a thinking block (written with thinking off, or by another provider): the API refuses
    thinking on for such a request."""
    i = len(messages) - 1
    while i >= start and (messages[i].role != "assistant" or _vanishes(messages[i])):
        i -= 1
    if i < start:
        return False
    while i > start and (messages[i - 1].role == "assistant" or _vanishes(messages[i - 1])):
        i -= 1  # they merge into one (what vanishes between them is not sent)
    while messages[i].role != "assistant" or _vanishes(messages[i]):
        i += 1  # the merged message starts with the first assistant message that is sent
    first = messages[i].content
    return bool(first) and not isinstance(first[0], THINKING_BLOCKS)


__all__ = ["MIN_BUDGET", "OFF_NOTE", "FinishedTurns", "check_budget",
           "finished_turns_without_thinking", "loop_start", "replay_thinking",
           "thinking_off_after_repair"]
