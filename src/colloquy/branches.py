"""Edits and regenerations on an append-only log: what a conversation's current branch is.

Editing the last user message, or regenerating the last reply, never rewrites a stored row: it
appends a new turn whose user message names, in its meta, the turn it replaces
(``supersedes``: the seqs of that turn's user message, replies and tool exchanges; ``revision``:
``"edit"`` or ``"regenerate"``). The replaced turn stays in the log, in exports and in the
conversation's history as shown, marked superseded.

:class:`CurrentBranch` is the one place that decides which stored messages a model is shown
again: neither superseded turns nor turns an input guard blocked (their messages carry
``blocked`` in their meta, colloquy.guards). Every context policy receives the log already
filtered by it (:meth:`colloquy.Chat.build_context`), as do the guards' recent messages and fact
extraction.

Why the newest turn only: a revision of an older turn would make every later turn answer a
question that no longer exists; chat products (ChatGPT, Claude.ai) likewise branch from the
message edited and drop what followed it from the context, which here is the same as editing
the newest turn after going back. The log stays the single source of truth either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from .errors import EditConflict, NothingToRevise
from .guards.base import BLOCKED
from .messages import Message, StoredMessage

#: Meta key of a revising turn's user message: the seqs of the turn it replaces.
SUPERSEDES = "supersedes"
#: Meta key of a revising turn's user message: "edit" or "regenerate".
REVISION = "revision"

Revision = Literal["edit", "regenerate"]


def superseded_by(history: Sequence[StoredMessage]) -> dict[int, int]:
    """``{seq: seq of the user message that superseded it}`` over ``history`` (every message
    of a replaced turn is listed)."""
    out: dict[int, int] = {}
    for sm in history:
        for seq in sm.meta.get(SUPERSEDES) or ():
            out[int(seq)] = sm.seq
    return out


class CurrentBranch:
    """Filters a log down to the messages a model is shown again.

    Scans only what it has not seen of the engine's own log list (the list object a
    :class:`colloquy.Chat` keeps and extends), so a turn's cost does not grow with the
    conversation's length; another list is scanned whole.
    """

    def __init__(self) -> None:
        self._scanned: tuple[list[StoredMessage] | None, int] = (None, 0)  # (log list, scanned)
        self._hidden: set[int] = set()

    def visible(self, history: Sequence[StoredMessage]) -> Sequence[StoredMessage]:
        """``history`` without superseded and blocked messages, oldest first (``history``
        itself when nothing is hidden)."""
        if not isinstance(history, list):
            history = list(history)
        seen, upto = self._scanned
        if seen is not history or upto > len(history):
            self._hidden = set()
            upto = 0
        for sm in history[upto:]:
            if sm.meta.get(BLOCKED):
                self._hidden.add(sm.seq)
            for seq in sm.meta.get(SUPERSEDES) or ():
                self._hidden.add(int(seq))
        self._scanned = (history, len(history))
        if not self._hidden:
            return history
        return [sm for sm in history if sm.seq not in self._hidden]


def last_turn(history: Sequence[StoredMessage]) -> tuple[Message, list[int]]:
    """The newest turn not yet superseded: its opening user message and the seqs of all its
    messages (the user message, the replies, the tool exchanges between them). A turn an input
    guard blocked counts (editing it is how a user rephrases). Raises :class:`NothingToRevise`
    when there is none. Walks back from the end: the cost is the turn's length."""
    gone: set[int] = set()  # a turn's replacement comes after it: seen first, walking back
    seqs: list[int] = []
    for sm in reversed(history):
        gone.update(int(s) for s in sm.meta.get(SUPERSEDES) or ())
        if sm.seq in gone:
            continue
        seqs.append(sm.seq)
        if sm.message.starts_turn:
            return sm.message, sorted(seqs)
    raise NothingToRevise("there is no message to edit or regenerate yet")


def revised_turn(conversation_id: str, history: Sequence[StoredMessage], revision: Revision,
                 target: int | None) -> tuple[Message, list[int]]:
    """:func:`last_turn`, checked against the message the revision was meant for: ``target``
    (a seq; None: whatever turn is newest) must be the newest turn's user message for an edit,
    any of its messages (the reply, usually) for a regeneration. Raises :class:`EditConflict`
    otherwise (a message was sent, or the turn revised, since the client showed it: from a
    stale edit box, another tab or device) and :class:`NothingToRevise` without a turn."""
    try:
        message, seqs = last_turn(history)
    except NothingToRevise:
        if target is None:
            raise
        raise EditConflict(conversation_id, target, None) from None
    if target is not None and (target != seqs[0] if revision == "edit" else target not in seqs):
        raise EditConflict(conversation_id, target, seqs[0])
    return message, seqs


def revision_meta(revision: Revision, seqs: Sequence[int]) -> dict[str, Any]:
    """The meta a revising turn's user message carries."""
    return {SUPERSEDES: list(seqs), REVISION: revision}


__all__ = ["REVISION", "SUPERSEDES", "CurrentBranch", "EditConflict", "NothingToRevise",
           "Revision", "last_turn", "revised_turn", "revision_meta", "superseded_by"]
