"""Context policies: what of the stored log the model sees each turn."""

from .base import Context, ContextInput, ContextPolicy
from .policies import FullHistory, RollingWindow, TokenBudget
from .validate import problems, repair, validate

__all__ = [
    "Context",
    "ContextInput",
    "ContextPolicy",
    "FullHistory",
    "RollingWindow",
    "TokenBudget",
    "problems",
    "repair",
    "validate",
]
