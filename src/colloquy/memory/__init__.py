"""Memory beyond the window: summaries of older turns and structured facts about the user.

* :class:`Summary`, :class:`Fact`: the derived records (stored beside the log, never replacing it);
* :class:`FactExtractor` / :class:`FactExtraction`: facts pulled out by a model's tool call after
  turns (the engine hook, ``Chat(extract_facts=...)``);
* :class:`ExtractiveSummariser`, :class:`RuleFactExtractor`: the OFFLINE models for benches,
  tests and offline demos.

The context parts that use them live in colloquy.context (summary.py, facts.py, compose.py).
"""

from .extract import ExtractionError, FactExtraction, FactExtractor, FactOp, apply_ops
from .models import DEFAULT_MEMORY_MODEL, OFFLINE_FACTS, OFFLINE_SUMMARISER
from .offline import ExtractiveSummariser, RuleFactExtractor
from .records import Fact, Summary, normalise

__all__ = [
    "DEFAULT_MEMORY_MODEL",
    "OFFLINE_FACTS",
    "OFFLINE_SUMMARISER",
    "ExtractionError",
    "ExtractiveSummariser",
    "Fact",
    "FactExtraction",
    "FactExtractor",
    "FactOp",
    "RuleFactExtractor",
    "Summary",
    "apply_ops",
    "normalise",
]
