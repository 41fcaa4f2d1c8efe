"""Running a stage's guards on one text: timeouts, fail modes, chained rewrites, the first block."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..messages import Message, TextBlock
from .base import BLOCKED, VERDICTS, Guard, GuardContext, Stage, Verdict, as_guard


def _run_with_timeout(guard: Guard, text: str, ctx: GuardContext) -> Verdict | None:
    """Run one check; a timeout raises TimeoutError. The check runs in a daemon thread so a
    hung moderation call cannot hold the turn (or the process at exit)."""
    if guard.timeout is None:
        return guard.check(text, ctx)
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["out"] = guard.check(text, ctx)
        except BaseException as e:  # noqa: BLE001 - handed back to the caller
            box["err"] = e

    t = threading.Thread(target=work, name=f"guard-{guard.name}", daemon=True)
    t.start()
    t.join(guard.timeout)
    if t.is_alive():
        raise TimeoutError(f"guard {guard.name!r} took longer than {guard.timeout}s")
    if "err" in box:
        raise box["err"]
    return box.get("out")


@dataclass
class GuardOutcome:
    """The result of running a stage's guards on one text."""

    text: str
    #: Every verdict that was not a plain allow (rewrites, blocks, failures, notes), in order.
    verdicts: list[Verdict] = field(default_factory=list)
    blocked: Verdict | None = None

    @property
    def changed(self) -> bool:
        return any(v.action == "rewrite" for v in self.verdicts)

    def meta(self) -> dict[str, Any]:
        """Meta for the stored message (empty when every guard simply allowed)."""
        out: dict[str, Any] = {}
        if self.verdicts:
            out[VERDICTS] = [v.record() for v in self.verdicts]
        if self.blocked is not None:
            out[BLOCKED] = True
        return out


class GuardSet:
    """An ordered list of guards, run stage by stage. Rewrites chain (each guard sees the text
    the previous one produced); the first block stops the stage."""

    def __init__(self, guards: Iterable[Guard | Callable[..., Any]] = ()) -> None:
        self.guards: list[Guard] = [as_guard(g) for g in guards]

    def __bool__(self) -> bool:
        return bool(self.guards)

    def __len__(self) -> int:
        return len(self.guards)

    def stage(self, stage: Stage) -> list[Guard]:
        return [g for g in self.guards if stage in g.stages]

    def run(self, stage: Stage, text: str, ctx: GuardContext) -> GuardOutcome:
        outcome = GuardOutcome(text=text)
        for guard in self.stage(stage):
            try:
                verdict = _run_with_timeout(guard, outcome.text, ctx) or Verdict.allow()
                if not isinstance(verdict, Verdict):
                    raise TypeError(f"returned {type(verdict).__name__}, not a Verdict")
                if verdict.action == "block" and not verdict.message:
                    verdict = verdict.model_copy(update={"message": guard.fail_message})
                if verdict.action == "rewrite" and verdict.text is None:
                    raise ValueError("a rewrite verdict needs text")
            except Exception as e:  # noqa: BLE001 - a guard must never crash the turn
                err = f"{type(e).__name__}: {e}"
                if guard.on_error == "open":
                    verdict = Verdict(action="allow", reason="guard failed; failing open", error=err)
                else:
                    verdict = Verdict(action="block", message=guard.fail_message,
                                      reason="guard failed; failing closed", error=err)
            verdict = verdict.model_copy(update={"guard": guard.name, "stage": stage})
            if verdict.action == "allow" and verdict.error is None and verdict.note is None:
                continue
            outcome.verdicts.append(verdict)
            if verdict.action == "rewrite":
                outcome.text = verdict.text or ""
            elif verdict.action == "block":
                outcome.blocked = verdict
                break
        return outcome



def replace_text(message: Message, text: str) -> Message:
    """``message`` with its text blocks replaced by one block of ``text`` (other blocks kept)."""
    others = [b for b in message.content if not isinstance(b, TextBlock)]
    head = [TextBlock(text=text)] if text or not others else []
    return Message(role=message.role, content=[*head, *others])
