"""Named policies and policy config files: what ``--policy NAME`` and ``--policy-config FILE``
build.

Names:
    default  what a chat uses without a policy: recent turns + recalled older turns under a
             budget fitted to the model, cache-friendly, no extra model call (context/default.py)
    window   the last N turns (``--window``, default 20)
    budget   the newest turns under ``--max-input-tokens``
    full     everything
    summary  summary of older turns + recent turns, under one budget
    facts    facts about the user + recent turns
    recall   recalled older turns + recent turns
    memory   facts + summary + recalled turns + recent turns + tool-output pruning (+ prompt-cache
             breakpoints and a stepped window with Anthropic models), under one budget

A config file (TOML or JSON) names a policy and tunes it::

    policy = "memory"
    max_input_tokens = 4000
    min_recent_turns = 2
    priority = ["facts", "recent", "summary", "recall", "window"]
    [caps]        # per stage: share of the budget (<= 1.0) or tokens
    facts = 0.15
    [placement]   # per part: "system" (after the persona) or "user" (in the newest message)
    recall = "user"
    [summary]     # model, min_new_turns, min_new_tokens, max_tokens
    model = "claude-haiku-4-5"
    [facts]       # max_facts, only_relevant
    [extract]     # the engine's fact extraction: model, every (turns; 0 = off)
    [recall]      # passed to RecallPart
    [pruning]     # passed to ToolOutputPruning
    [cache]       # enabled (default: on for Anthropic chat models), SteppedWindow options

Flags beat the file; the file beats the defaults.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..memory.extract import FactExtraction, FactExtractor
from ..memory.models import default_memory_models
from ..models.base import Model
from .base import ContextPolicy
from .compose import (
    DEFAULT_CAPS,
    ComposedPolicy,
    ContextPart,
    MessageTransform,
    RecentTurns,
    RecentWindow,
)
from .facts import FactsPart
from .policies import FullHistory, RollingWindow, TokenBudget
from .summary import Summariser, SummaryPart

POLICY_NAMES = ("default", "window", "budget", "full", "summary", "facts", "recall", "memory")
DEFAULT_MAX_INPUT_TOKENS = 8000
DEFAULT_WINDOW = 20
_KNOWN_KEYS = {"policy", "max_input_tokens", "window", "min_recent_turns", "priority", "caps",
               "placement", "summary", "facts", "extract", "recall", "pruning", "cache"}


def load_policy_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or JSON file into a dict, with clear errors."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read policy config {str(p)!r}: {e.strerror or e}") from e
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"policy config {str(p)!r} is not valid "
                          f"{'JSON' if p.suffix.lower() == '.json' else 'TOML'}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"policy config {str(p)!r} must hold a table/object at the top")
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"policy config {str(p)!r}: unknown keys {unknown}; "
                          f"known: {sorted(_KNOWN_KEYS)}")
    return data


def _table(config: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"policy config: [{key}] must be a table")
    return dict(value)


def _build(kind: type, options: Mapping[str, Any], what: str) -> Any:
    try:
        return kind(**options)
    except TypeError as e:
        raise ConfigError(f"policy config: bad [{what}] options: {e}") from e


def _is_anthropic(chat_model: Model | str | None) -> bool:
    if isinstance(chat_model, Model):
        return chat_model.provider == "anthropic"
    return chat_model is not None and chat_model.removeprefix("anthropic:").startswith("claude")


def make_policy(
    name: str | None = None,
    *,
    max_input_tokens: int | None = None,
    window: int | None = None,
    config: Mapping[str, Any] | None = None,
    chat_model: Model | str | None = None,
) -> ContextPolicy:
    """Build a named policy (see the module docstring); flags override ``config``."""
    config = config or {}
    name = name or config.get("policy") or "default"
    if name not in POLICY_NAMES:
        raise ConfigError(f"unknown policy {name!r}: use one of {', '.join(POLICY_NAMES)}")
    budget = max_input_tokens or config.get("max_input_tokens")
    turns = window or config.get("window")
    if name == "default":
        from .default import DefaultPolicy

        options = _table(config, "recall")
        return DefaultPolicy(max_input_tokens=int(budget) if budget else None,
                             retriever=options.get("retriever"))
    if name == "window":
        return RollingWindow(turns=int(turns or DEFAULT_WINDOW))
    if name == "full":
        return FullHistory()
    if name == "budget":
        return TokenBudget(max_input_tokens=int(budget or DEFAULT_MAX_INPUT_TOKENS))

    summariser_name, _ = default_memory_models(chat_model)
    parts: list[ContextPart] = []
    transforms: list[MessageTransform] = []
    cache = _table(config, "cache")
    use_cache = bool(cache.pop("enabled", name == "memory" and _is_anthropic(chat_model)))
    if name in {"facts", "memory"}:
        # With prompt caching, facts keep a byte-stable cached block (see context/facts.py).
        parts.append(_build(FactsPart, {"stable": use_cache, **_table(config, "facts")}, "facts"))
    if name in {"summary", "memory"}:
        opts = _table(config, "summary")
        summariser = Summariser(opts.pop("model", summariser_name),
                                **{k: opts.pop(k) for k in ("max_tokens",) if k in opts})
        parts.append(_build(SummaryPart, {"summariser": summariser, **opts}, "summary"))
    if name in {"recall", "memory"}:
        recall = _recall_part(_table(config, "recall"))
        if recall is not None:
            parts.append(recall)
    if name == "memory":
        pruning = _pruning(_table(config, "pruning"))
        if pruning is not None:
            transforms.append(pruning)

    recent: RecentWindow = RecentTurns(turns=int(turns) if turns else None)
    placement = dict(_table(config, "placement"))
    caps = {**PRESET_CAPS.get(name, {}), **_table(config, "caps")}
    limit = int(budget or DEFAULT_MAX_INPUT_TOKENS)
    if use_cache:
        # A fixed high-water mark and grid, so the cut points do not move with the turn's size.
        share = caps.get("recent", DEFAULT_CAPS["recent"])
        high = int(limit * share) if isinstance(share, float) and share <= 1.0 else int(share)
        cache.setdefault("high_water", max(1, high))
        cache.setdefault("step_tokens", max(1, high // 2))
        stepped = _stepped(cache)
        if stepped is not None:
            recent = stepped
        if any(p.name == "recall" for p in parts):
            # Recall changes every turn: in the newest message it leaves the cached prefix alone.
            placement.setdefault("recall", "user")
    try:
        policy: ContextPolicy = ComposedPolicy(
            limit, parts=parts, recent=recent,
            transforms=transforms, min_recent_turns=int(config.get("min_recent_turns", 1)),
            priority=config.get("priority"), caps=caps or None, placement=placement or None,
            stable_window=use_cache and not isinstance(recent, RecentTurns),
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"policy config: {e}") from e
    if use_cache:
        policy = _breakpoints(policy)
    return policy


#: Budget shares per named policy (stages: the parts, "recent"); unused shares pass down the
#: priority order, and whatever is left at the end extends the verbatim window.
PRESET_CAPS: dict[str, dict[str, float | int]] = {
    "summary": {"recent": 0.7, "summary": 0.3},
    "facts": {"facts": 0.2, "recent": 0.8},
    "recall": {"recent": 0.5, "recall": 0.5},
    "memory": {"facts": 0.1, "recent": 0.3, "summary": 0.15, "recall": 0.45},
}

#: The named policies, with what each holds (for --help, benches and docs).
PRESETS: dict[str, str] = {
    "default": "recent turns + recalled older turns, budget fitted to the model (no extra call)",
    "window": "the last N turns",
    "budget": "the newest turns under the token budget",
    "full": "the whole history",
    "summary": "summary of older turns + recent turns",
    "facts": "facts about the user + recent turns",
    "recall": "recalled older turns + recent turns",
    "memory": "facts + summary + recalled turns + recent turns + tool-output pruning",
}


def preset(name: str, *, max_input_tokens: int | None = None, offline: bool = True,
           **options: Any) -> ContextPolicy:
    """A named policy for benches and tests: like :func:`make_policy`, but with the OFFLINE
    memory models by default (deterministic, no network; ``offline=False`` for Haiku).
    ``options`` are config-file keys (``min_recent_turns``, ``summary={...}``, ...)."""
    return make_policy(name, max_input_tokens=max_input_tokens, config=options,
                       chat_model="echo" if offline else None)


def make_extraction(
    policy_name: str | None = None,
    *,
    every: int | None = None,
    model: Model | str | None = None,
    config: Mapping[str, Any] | None = None,
    chat_model: Model | str | None = None,
) -> FactExtraction | None:
    """The engine's fact-extraction hook for a policy: on (every turn) when the policy injects
    facts, off otherwise, unless ``every`` or the config's ``[extract]`` says.
    ``every=0`` turns it off."""
    config = config or {}
    opts = _table(config, "extract")
    name = policy_name or config.get("policy") or "default"
    default_every = 1 if name in {"facts", "memory"} else 0
    n = every if every is not None else int(opts.get("every", default_every))
    if n <= 0:
        return None
    _, extractor_name = default_memory_models(chat_model)
    extractor = FactExtractor(model or opts.get("model") or extractor_name,
                              **{k: opts[k] for k in ("max_tokens",) if k in opts})
    return FactExtraction(extractor=extractor, every=n)


# -- the parts built by the recall/pruning/cache modules (optional until they are present) ------


def _recall_part(options: dict[str, Any]) -> ContextPart | None:
    try:
        from .recall import RecallPart
    except ImportError:  # pragma: no cover - recall ships with the package
        return None
    return _build(RecallPart, options, "recall")  # type: ignore[no-any-return]


def _pruning(options: dict[str, Any]) -> MessageTransform | None:
    try:
        from .pruning import ToolOutputPruning
    except ImportError:  # pragma: no cover
        return None
    return _build(ToolOutputPruning, options, "pruning")  # type: ignore[no-any-return]


def _stepped(options: dict[str, Any]) -> RecentWindow | None:
    try:
        from .cache import SteppedWindow
    except ImportError:  # pragma: no cover
        return None
    return _build(SteppedWindow, options, "cache")  # type: ignore[no-any-return]


def _breakpoints(policy: ContextPolicy) -> ContextPolicy:
    try:
        from .cache import CacheBreakpoints
    except ImportError:  # pragma: no cover
        return policy
    return CacheBreakpoints(policy)  # type: ignore[no-any-return]


__all__ = [
    "DEFAULT_MAX_INPUT_TOKENS",
    "POLICY_NAMES",
    "PRESETS",
    "preset",
    "load_policy_config",
    "make_extraction",
    "make_policy",
]
