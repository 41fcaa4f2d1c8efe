"""Context policies: what of the stored log the model sees each turn."""

from .base import Context, ContextInput, ContextPolicy
from .compose import (
    ComposedPolicy,
    ContextPart,
    MessageTransform,
    PartResult,
    RecentTurns,
    RecentWindow,
)
from .facts import FactsPart
from .policies import FullHistory, RollingWindow, TokenBudget
from .presets import load_policy_config, make_extraction, make_policy
from .summary import Summariser, SummaryPart
from .validate import problems, repair, repair_request, validate
from .cache import CacheAwareWindow, CacheBreakpoints, SteppedWindow
from .pruning import ToolOutputPruning
from .recall import RecallPart, RecallPolicy

__all__ = [
    "CacheAwareWindow",
    "CacheBreakpoints",
    "RecallPart",
    "RecallPolicy",
    "SteppedWindow",
    "ToolOutputPruning",
    "ComposedPolicy",
    "Context",
    "ContextInput",
    "ContextPart",
    "ContextPolicy",
    "FactsPart",
    "FullHistory",
    "MessageTransform",
    "PartResult",
    "RecentTurns",
    "RecentWindow",
    "RollingWindow",
    "Summariser",
    "SummaryPart",
    "TokenBudget",
    "load_policy_config",
    "make_extraction",
    "make_policy",
    "problems",
    "repair",
    "repair_request",
    "validate",
]
