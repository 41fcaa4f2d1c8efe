"""Building guards from specs: CLI flags (``--guard``) and config files (``--guards FILE``)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from .base import FunctionGuard, Guard
from .length import LengthGuard
from .pii import PII_KINDS, PIIRedactor
from .learned import LearnedTopicGuard
from .topic import TopicGuard


#: The [persona] table's keys that build its topic guard (``system`` is the persona itself).
PERSONA_TOPIC_KEYS = ("topics", "steer", "method", "judge", "threshold", "on_error", "timeout",
                      "classifier", "examples", "context_weight", "non_english",
                      "target_false_block")
_UNKNOWN_ARGUMENT = re.compile(r"unexpected keyword argument '(\w+)'")


def load_hook(path: str) -> Any:
    """``module:attribute`` or ``file.py:attribute`` -> a Guard, a Guard class, or a callable."""
    from ..plugins import load_object

    return load_object(path, "hook")


def guard_from_config(cfg: dict[str, Any], *, judge: Any = None) -> Guard:
    """One guard from a config table: ``{"type": "topic" | "pii" | "length" | "hook", ...}``.

    A topic table with ``classifier`` (a file from ``colloquy guard fit``), ``examples`` (a file
    fitted at start-up) or ``method = "examples"`` builds a :class:`LearnedTopicGuard` (its
    options: ``context_weight``, ``non_english``, ``target_false_block``, ``judge``, ``steer``);
    otherwise a :class:`TopicGuard` by description.

    Common keys: ``on_error`` ("closed"/"open"), ``timeout`` (seconds), ``stages``.
    """
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    common: dict[str, Any] = {}
    for key in ("on_error", "stages"):
        if key in cfg:
            common[key] = cfg.pop(key)
    if common.get("on_error") not in (None, "closed", "open"):
        raise ConfigError(f"guard {kind!r}: on_error must be 'closed' or 'open'")
    timeout = cfg.pop("timeout", "default")
    try:
        guard: Guard
        if kind == "topic":
            topics = cfg.pop("topics", None)
            if isinstance(topics, list):
                topics = ", ".join(topics)
            g_judge = cfg.pop("judge", None) or judge
            if cfg.get("method") == "examples" or "classifier" in cfg or "examples" in cfg:
                cfg.pop("method", None)
                guard = LearnedTopicGuard(cfg.pop("classifier", None), topics=str(topics or ""),
                                          judge=g_judge, **common, **cfg)
            else:
                guard = TopicGuard(str(topics or ""), judge=g_judge, **common, **cfg)
        elif kind == "pii":
            guard = PIIRedactor(**common, **cfg)
        elif kind == "length":
            guard = LengthGuard(**common, **cfg)
        elif kind == "hook":
            target = load_hook(str(cfg.pop("callable", cfg.pop("hook", ""))))
            if isinstance(target, type) and issubclass(target, Guard):
                guard = target(**cfg)
                for k, v in common.items():
                    setattr(guard, k, tuple(v) if k == "stages" else v)
            elif isinstance(target, Guard):
                guard = target
            else:
                guard = FunctionGuard(target, **common, **cfg)
        else:
            raise ConfigError(f"unknown guard type {kind!r}: use topic, pii, length or hook")
    except TypeError as e:
        unknown = _UNKNOWN_ARGUMENT.search(str(e))
        if unknown:
            raise ConfigError(f"guard {kind!r}: unknown key {unknown.group(1)!r}") from e
        raise ConfigError(f"guard {kind!r}: {e}") from e
    if timeout != "default":
        guard.timeout = None if timeout is None else float(timeout)
    return guard


def guard_from_spec(spec: str, *, judge: Any = None) -> Guard:
    """A guard from a CLI flag value:

    ``topic:cooking,recipes``   topic guard (judge: ``--guard-model``, else keywords)
    ``pii`` / ``pii:email,card`` PII redactor (all kinds, or the listed ones)
    ``length:4000``             length/abuse guard with that many characters at most
    ``hook:pkg.mod:function``   your own callable or Guard class (or ``hook:file.py:function``)
    """
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    arg = arg.strip().strip("\"'")
    if kind == "topic":
        topics = ", ".join(t.strip() for t in arg.split(",") if t.strip())
        if not topics:
            raise ConfigError("--guard topic needs topics: --guard topic:\"cooking,recipes\"")
        return guard_from_config({"type": "topic", "topics": topics}, judge=judge)
    if kind == "pii":
        kinds = [k.strip() for k in arg.split(",") if k.strip()] or list(PII_KINDS)
        return guard_from_config({"type": "pii", "kinds": kinds})
    if kind == "length":
        try:
            return guard_from_config({"type": "length", **({"max_chars": int(arg)} if arg else {})})
        except ValueError as e:
            raise ConfigError(f"--guard length:N needs a number of characters, not {arg!r}") from e
    if kind == "hook":
        return guard_from_config({"type": "hook", "callable": arg})
    raise ConfigError(f"unknown guard {spec!r}: use topic:TOPICS, pii[:KINDS], length[:N] or hook:MOD:FN")


def load_guard_config(path: str, *, judge: Any = None) -> tuple[list[Guard], dict[str, Any]]:
    """Guards (and the persona table, if any) from a TOML or JSON file::

        [persona]
        system = "You are a cooking assistant."
        topics = "cooking, recipes, kitchen equipment"   # adds a topic guard
        steer = "I only talk about food. What shall we cook?"
        classifier = "cooking-topic.json"   # learned from examples (colloquy guard fit)

    Paths (``classifier``, ``examples``) are relative to the config file's folder.

        [[guards]]
        type = "pii"
        kinds = ["email", "card"]

        [[guards]]
        type = "hook"
        callable = "mymod:moderate"
        on_error = "open"
        timeout = 2
    """
    import tomllib

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"guard config {path!r}: {e.strerror or e}") from e
    try:
        data = json.loads(raw) if path.endswith(".json") else tomllib.loads(raw.decode("utf-8"))
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"guard config {path!r} is not valid {'JSON' if path.endswith('.json') else 'TOML'}: {e}") from e
    where = f"guard config {path!r}"
    # Every key is one colloquy reads: a misspelt or misplaced one (``persona = "..."`` at the
    # top, ``[guard]`` for ``[[guards]]``, ``sytem``) would otherwise be ignored in silence.
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: not a table of [persona] and [[guards]]")
    for key in data:
        if key not in ("persona", "guards"):
            raise ConfigError(f"{where}: unknown key {key!r} (the file holds a [persona] table "
                              "and [[guards]] tables)")
    persona_table = data.get("persona") or {}
    if not isinstance(persona_table, dict):
        raise ConfigError(f"{where}: 'persona' must be a table ([persona] with system = ...)")
    persona = dict(persona_table)
    for key in persona:
        if key != "system" and key not in PERSONA_TOPIC_KEYS:
            raise ConfigError(f"{where}: unknown key 'persona.{key}' (known: system, "
                              f"{', '.join(PERSONA_TOPIC_KEYS)})")
    entries = data.get("guards") or []
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: 'guards' must be a list of tables ([[guards]])")
    guards: list[Guard] = []
    try:
        if persona.get("topics") or persona.get("classifier") or persona.get("examples"):
            topic_cfg: dict[str, Any] = {"type": "topic", "topics": persona.get("topics", "")}
            topic_cfg.update((k, persona[k]) for k in PERSONA_TOPIC_KEYS[1:] if k in persona)
            guards.append(guard_from_config(_relative_to(topic_cfg, path), judge=judge))
        for i, cfg in enumerate(entries, 1):
            if not isinstance(cfg, dict):
                raise ConfigError(f"each [[guards]] entry must be a table (entry {i} is not)")
            guards.append(guard_from_config(_relative_to(cfg, path), judge=judge))
    except (ConfigError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e
    return guards, persona


def _relative_to(cfg: dict[str, Any], config_path: str) -> dict[str, Any]:
    """``cfg`` with its file options (classifier, examples) resolved from the config's folder."""
    import os

    out = dict(cfg)
    for key in ("classifier", "examples"):
        if isinstance(out.get(key), str) and not os.path.isabs(out[key]):
            out[key] = os.path.join(os.path.dirname(os.path.abspath(config_path)), out[key])
    return out


def build_guards(
    specs: Sequence[str] = (), config: str | None = None, *, judge: Any = None
) -> tuple[list[Guard], dict[str, Any]]:
    """Guards from CLI flags: the config file's first (with its persona table), then each
    ``--guard`` spec in order."""
    guards, persona = load_guard_config(config, judge=judge) if config else ([], {})
    guards += [guard_from_spec(s, judge=judge) for s in specs]
    return guards, persona
