"""The plain-text transcript format shared by the summariser and fact-extractor prompts.

Why a fixed format: any model can read it, and the offline models (memory/offline.py) parse it
back, so the offline path exercises exactly the request a real model would receive. Every line
carries the message's sequence number (``[#12 user 2026-05-08]``) so a summary or a fact can
say where it came from.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from ..messages import StoredMessage, TextBlock, ToolResultBlock, ToolUseBlock
from ..text import as_data

_LINE = re.compile(r"^\[#(?P<seq>\d+) (?P<role>user|assistant)(?: (?P<date>[^\]]+))?\] (?P<text>.*)$")
TOOL_HEAD = 160


def message_line(sm: StoredMessage) -> str:
    """One message on one line: ``[#seq role date] text`` (tool blocks abbreviated)."""
    parts: list[str] = []
    for b in sm.message.content:
        if isinstance(b, TextBlock):
            parts.append(b.text)
        elif isinstance(b, ToolUseBlock):
            parts.append(f"(called tool {b.name})")
        elif isinstance(b, ToolResultBlock):
            head = b.text[:TOOL_HEAD] + ("…" if len(b.text) > TOOL_HEAD else "")
            parts.append(f"(tool result: {head})")
    text = as_data(" ".join(parts), one_line=True)  # cannot close a block nor forge a line
    date = sm.meta.get("date") or sm.meta.get("time")
    if not date and sm.created_at:
        date = time.strftime("%Y-%m-%d", time.gmtime(sm.created_at))
    return f"[#{sm.seq} {sm.role}{' ' + str(date) if date else ''}] {text}"


def transcript(messages: Sequence[StoredMessage]) -> str:
    return "\n".join(message_line(sm) for sm in messages)


def parse_lines(text: str) -> list[tuple[int, str, str, str]]:
    """(seq, role, date, text) for each transcript line in ``text``."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            out.append((int(m["seq"]), m["role"], m["date"] or "", m["text"]))
    return out


def section(text: str, tag: str) -> str | None:
    """The body of ``<tag>...</tag>`` in ``text`` (None when absent)."""
    m = re.search(rf"<{tag}>\n?(.*?)\n?</{tag}>", text, re.S)
    return m.group(1) if m else None
