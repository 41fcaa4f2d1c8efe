"""Memory beyond the window: summaries of older turns and structured facts about the user."""

from .records import Fact, Summary, normalise

__all__ = ["Fact", "Summary", "normalise"]
