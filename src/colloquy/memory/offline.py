"""OFFLINE memory models: a deterministic extractive summariser and a rule-based fact extractor.

They are real :class:`Model` implementations that read the same requests a real model gets
(memory/transcript.py format) and answer in the same shape (summary text; a ``record_memory``
tool call), so benches and tests exercise the whole memory path without a network. They are
heuristics, clearly weaker than a language model: use them for benches, tests and offline
demos, and a real model (default ``claude-haiku-4-5``) for users.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from ..messages import TextBlock, ToolUseBlock
from ..models.base import Model, ModelRequest, ModelResponse
from ..models.offline import KEEP_REQUESTS, RequestRecord
from ..tokens import estimate_text
from ..usage import Usage
from .records import normalise
from .transcript import parse_lines, section

_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_NUMBER = re.compile(r"\d")
_MONTHS = re.compile(
    r"\b(jan(uary)?|feb(ruary)?|mar(ch)?|apr(il)?|may|june?|july?|aug(ust)?|sep(tember)?|"
    r"oct(ober)?|nov(ember)?|dec(ember)?|monday|tuesday|wednesday|thursday|friday|saturday|"
    r"sunday|yesterday|tomorrow|today|tonight|weekend|last week|next week|last year|next year)\b",
    re.I,
)
_DECISION = re.compile(
    r"\b(decided|decide|decision|agreed|agree|plan|planning|planned|will|going to|gonna|"
    r"promise|deadline|booked|signed|chose|choose|picked|started|finished|bought|moved|"
    r"adopted|joined|quit|graduated|married|won|lost)\b", re.I,
)
_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]{2,}\b")
_BULLET = re.compile(r"^- (?:\[(?P<tags>[#\d, ]+)\] )?(?P<text>.*)$")
_COMMON_CAPS = {"The", "This", "That", "What", "When", "Where", "Why", "How", "Yes", "Yeah",
                "Thanks", "Thank", "Hey", "Wow", "Well", "And", "But", "Just", "Also", "Sure",
                "Great", "Nice", "Oh", "Haha", "Hello", "Good", "Sounds", "Really", "Awesome"}


def _score(sentence: str) -> int:
    """How many kinds of memorable detail a sentence holds: names, numbers, dates, decisions,
    questions."""
    names = [w for w in _NAME.findall(sentence) if w not in _COMMON_CAPS]
    return (bool(names) + bool(_NUMBER.search(sentence)) + bool(_MONTHS.search(sentence))
            + bool(_DECISION.search(sentence)) + sentence.rstrip().endswith("?"))


class _OfflineModel(RequestRecord, Model):
    """Keeps its last requests as the other offline models do (bounded, and forgetting
    deleted conversations: colloquy.models.offline.RequestRecord)."""

    provider = "offline"

    def __init__(self, keep_requests: int = KEEP_REQUESTS) -> None:
        self._start_record(keep_requests)

    def _record(self, request: ModelRequest) -> str:
        self._keep(request)
        return next((m.text for m in reversed(request.messages) if m.role == "user"), "")

    def _usage(self, request: ModelRequest, out: str) -> Usage:
        inp = sum(estimate_text(m.text) for m in request.messages)
        inp += sum(estimate_text(b.text) for b in request.system)
        return Usage(input_tokens=inp, output_tokens=estimate_text(out))


class ExtractiveSummariser(_OfflineModel):
    """OFFLINE, deterministic summariser: keeps the sentences with names, numbers, dates,
    decisions and questions, tagged with their message number (``- [#12] user: ...``), folds
    the previous summary's bullets in, and drops the least informative (then oldest) bullets
    to stay under the request's ``max_tokens``."""

    name = "offline-summariser"

    def request(self, request: ModelRequest) -> ModelResponse:
        body = self._record(request)
        bullets: list[tuple[int, int, str]] = []  # (score, order, line)
        for line in (section(body, "previous_summary") or "").splitlines():
            m = _BULLET.match(line.strip())
            if m and m["text"]:
                bullets.append((_score(m["text"]) or 1, len(bullets), line.strip()))
        for seq, role, _date, text in parse_lines(section(body, "new_messages") or ""):
            for sentence in _SENT.split(text):
                sentence = sentence.strip()
                score = _score(sentence)
                if score and len(sentence) > 3:
                    bullets.append((score, len(bullets), f"- [#{seq}] {role}: {sentence}"))
        limit = int(request.max_tokens * 0.9)
        kept = list(bullets)
        while kept and estimate_text("\n".join(b[2] for b in kept)) > limit:
            kept.remove(min(kept, key=lambda b: (b[0], b[1])))
        text = "\n".join(b[2] for b in sorted(kept, key=lambda b: b[1])) or "- (nothing notable yet)"
        return ModelResponse(content=[TextBlock(text=text)], usage=self._usage(request, text),
                             model=self.name, stop_reason="end_turn")


_STOP = r"(?=[.,;!?]|\s+(?:and|but|because|so|since|which|who|where|when|though|although)\b|$)"
_VALUE = r"(?P<v>[^.,;!?]{2,60}?)" + _STOP

#: (pattern, subject, statement template, single-valued?) for user sentences.
RULES: list[tuple[re.Pattern[str], str, str, bool]] = [
    (re.compile(r"\b[Mm]y name is (?P<v>[A-Z][\w'-]+(?: [A-Z][\w'-]+)?)"), "name", "is called {v}", True),
    (re.compile(r"\bi (?:now |currently )?live in " + _VALUE, re.I), "home", "lives in {v}", True),
    (re.compile(r"\bi(?:'m| am) (?:now |currently )?(?:living|based) in " + _VALUE, re.I), "home", "lives in {v}", True),
    (re.compile(r"\bi(?:'ve| have)? (?:just |recently )?moved to " + _VALUE, re.I), "home", "lives in {v}", True),
    (re.compile(r"\bi (?:now |currently )?work (?:at|for) " + _VALUE, re.I), "employer", "works at {v}", True),
    (re.compile(r"\bi work as (?:an? )?" + _VALUE, re.I), "occupation", "works as {v}", True),
    (re.compile(r"\bi (?:now |really |strongly |much )?prefer " + _VALUE, re.I), "preference", "prefers {v}", True),
    (re.compile(r"\bi(?:'m| am) (?:currently |now )?(?P<verb>debugging|building|learning|studying|writing|working on) " + _VALUE, re.I),
     "current activity", "is {verb} {v}", False),
    (re.compile(r"\bi (?:don't|do not|no longer) (?:like|love|enjoy) " + _VALUE, re.I), "dislikes", "does not like {v}", False),
    (re.compile(r"\bi (?:really )?(?:like|love|enjoy) " + _VALUE, re.I), "likes", "likes {v}", False),
    (re.compile(r"\bmy (?P<k>(?:favou?rite |best |home |)[a-z]+(?: [a-z]+)?) is " + _VALUE, re.I), "{k}", "{k} is {v}", True),
]


_TRAILING = re.compile(r"(?:\s+(?:any ?more|now|too|either|at all|very much|so much|a lot|"
                       r"these days|nowadays|though|actually))+$", re.I)


def _clean_value(value: str) -> str:
    return _TRAILING.sub("", value.strip()).strip()


def _subject(rule_subject: str, m: re.Match[str]) -> str:
    if rule_subject == "preference":  # "prefers metric units" is about units: one per topic
        words = _clean_value(m["v"]).split()
        head = re.sub(r"\W", "", words[-1].lower()) if words else ""
        return f"preference: {head}"
    return rule_subject.format(**m.groupdict())


class RuleFactExtractor(_OfflineModel):
    """OFFLINE, deterministic fact extractor: rules for "my name is / I live in / I work at /
    I work as / I prefer / I like / I don't like / I'm debugging ... / my X is Y" in the user's
    messages. Answers with a ``record_memory`` tool call: a new value of a single-valued
    subject (home, employer, a preference topic, "my X") updates the known fact; "I don't like
    X" retires "likes X"."""

    name = "offline-facts"

    def request(self, request: ModelRequest) -> ModelResponse:
        body = self._record(request)
        known: list[dict[str, str]] = []
        for line in (section(body, "known_facts") or "").splitlines():
            parts = [p.strip() for p in line.split(" | ", 2)]
            if len(parts) == 3:
                known.append({"id": parts[0], "subject": parts[1], "statement": parts[2].strip('"')})
        ops: list[dict[str, Any]] = []
        seen: set[str] = {normalise(k["statement"]) for k in known}
        for seq, role, _date, text in parse_lines(section(body, "new_messages") or ""):
            if role != "user":
                continue
            for rx, subject_t, statement_t, single in RULES:
                for m in rx.finditer(text):
                    groups = {k: _clean_value(v or "") for k, v in m.groupdict().items()}
                    groups["k"] = groups.get("k", "").lower()
                    if not groups["v"] or groups["k"] in {"name", "mind", "god"}:
                        continue
                    subject = _subject(subject_t, m).lower()
                    statement = statement_t.format(**groups)
                    ops.extend(self._ops(known, seen, subject, statement, single, seq, groups["v"]))
        text_out = str(len(ops))
        call = ToolUseBlock(id=f"toolu_{uuid.uuid4().hex[:20]}", name="record_memory",
                            input={"operations": ops})
        return ModelResponse(content=[call], usage=self._usage(request, text_out),
                             model=self.name, stop_reason="tool_use")

    @staticmethod
    def _ops(known: list[dict[str, str]], seen: set[str], subject: str, statement: str,
             single: bool, seq: int, value: str) -> list[dict[str, Any]]:
        key = normalise(statement)
        if key in seen:
            return []
        seen.add(key)
        if subject == "dislikes":
            liked = [k for k in known if k["subject"] == "likes"
                     and normalise(k["statement"]) == normalise(f"likes {value}")]
            if liked:
                known.remove(liked[0])
                return [{"op": "retire", "fact_id": liked[0]["id"], "source_seq": seq}]
        same = [k for k in known if k["subject"] == subject]
        if single and same:
            old = same[-1]
            old_statement = old["statement"]
            old.update(statement=statement)
            if normalise(old_statement) == key:
                return []
            return [{"op": "update", "fact_id": old["id"], "subject": subject,
                     "statement": statement, "source_seq": seq}]
        known.append({"id": f"new:{len(known)}", "subject": subject, "statement": statement})
        return [{"op": "add", "subject": subject, "statement": statement, "source_seq": seq}]
