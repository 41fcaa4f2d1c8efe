"""colloquy: chat with large language models that remembers context and stays on topic.

The small public API::

    from colloquy import Chat, SQLiteStore, RollingWindow
    chat = Chat(model="echo", system="You are terse.", store=SQLiteStore("chat.db"),
                session_id="demo", policy=RollingWindow(turns=10))
    print(chat.send("hello").text)
"""

from .chat import Chat, Reply
from .costs import SessionCost, SideCost, TurnCost
from .context import (
    Context,
    ContextInput,
    ContextPolicy,
    FullHistory,
    RollingWindow,
    TokenBudget,
)
from .errors import (
    AuthenticationError,
    BadRequestError,
    ColloquyError,
    ConfigError,
    ConflictError,
    ContextTooLongError,
    ConversationBusy,
    ConversationNotFound,
    EmptyCompletionError,
    EditConflict,
    IdempotencyKeyReused,
    ImportRefused,
    InvalidConversationError,
    InvalidTextError,
    MissingAPIKeyError,
    ModelConnectionError,
    ModelError,
    NoContextRecord,
    NothingToRevise,
    OverloadedError,
    OwnerGone,
    RateLimitError,
    StoreError,
    StoreUnavailable,
    ToolError,
    TurnLockLost,
    TurnSuperseded,
)
from .guards import (
    FunctionGuard,
    Guard,
    GuardContext,
    LearnedTopicGuard,
    LengthGuard,
    PIIRedactor,
    TopicClassifier,
    TopicGuard,
    Verdict,
    as_guard,
)
from .messages import (
    DocumentBlock,
    ImageBlock,
    Message,
    RedactedThinkingBlock,
    SearchResultBlock,
    ServerToolResultBlock,
    ServerToolUseBlock,
    StoredMessage,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    UnknownBlock,
)
from .openai_shape import from_openai_messages, openai_messages, to_openai_messages
from .models import (
    EchoModel,
    FunctionModel,
    Model,
    ModelRequest,
    ModelResponse,
    ScriptedModel,
    ThinkingDelta,
    get_model,
    tool_call,
)
from .store import Conversation, MemoryStore, SQLiteStore, Store, open_store
from .rights import delete_user, export_user, import_user, purge_conversations
# Memory (issue 3): composition under one budget, summaries, facts about the user.
from .context import (
    ComposedPolicy,
    ContextPart,
    FactsPart,
    MessageTransform,
    PartResult,
    RecentTurns,
    RecentWindow,
    Summariser,
    SummaryPart,
    load_policy_config,
    make_extraction,
    make_policy,
)
from .memory import (
    ExtractionError,
    ExtractiveSummariser,
    Fact,
    FactExtraction,
    FactExtractor,
    RuleFactExtractor,
    Summary,
)
from .store.memory_records import FactNotFound, MemoryRecordStore
# Memory (issue 3B): recall of older turns, tool-output pruning, prompt-cache-aware trimming.
from .context.cache import CacheAwareWindow, CacheBreakpoints, SteppedWindow
from .context.pruning import ToolOutputPruning
from .context.recall import RecallPart, RecallPolicy
# Issue 13: the default policy remembers; recall's fused ranking.
from .context.default import DefaultPolicy, default_budget
from .context.fusion import FusionWeights
from .tokens import TokenCounter
# The web page's issue 15: edits and regenerations on the append-only log, what the model saw.
from .branches import CurrentBranch
from .context.seen import SeenContext
from .tools import Tool, tool
from .usage import Price, Usage, cost_of, set_price

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "Chat",
    "ColloquyError",
    "ConfigError",
    "ConflictError",
    "Context",
    "ContextInput",
    "ContextPolicy",
    "ContextTooLongError",
    "Conversation",
    "ConversationBusy",
    "ConversationNotFound",
    "EchoModel",
    "EditConflict",
    "FullHistory",
    "FunctionGuard",
    "FunctionModel",
    "Guard",
    "GuardContext",
    "IdempotencyKeyReused",
    "ImageBlock",
    "ImportRefused",
    "InvalidConversationError",
    "InvalidTextError",
    "LearnedTopicGuard",
    "LengthGuard",
    "MemoryStore",
    "Message",
    "MissingAPIKeyError",
    "Model",
    "ModelConnectionError",
    "EmptyCompletionError",
    "ModelError",
    "ModelRequest",
    "ModelResponse",
    "OverloadedError",
    "OwnerGone",
    "PIIRedactor",
    "PostgresStore",
    "Price",
    "RateLimitError",
    "Reply",
    "RollingWindow",
    "SQLiteStore",
    "ScriptedModel",
    "SessionCost",
    "SideCost",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredMessage",
    "TextBlock",
    "TokenBudget",
    "TokenCounter",
    "Tool",
    "ToolError",
    "TurnLockLost",
    "TurnSuperseded",
    "ToolResultBlock",
    "ToolUseBlock",
    "TopicClassifier",
    "TopicGuard",
    "TurnCost",
    "Usage",
    "Verdict",
    "as_guard",
    "cost_of",
    "delete_user",
    "export_user",
    "get_model",
    "import_user",
    "open_store",
    "purge_conversations",
    "set_price",
    "to_openai_messages",
    "tool",
    "tool_call",
]

# Memory (issue 3).
__all__ += [
    "ComposedPolicy",
    "DefaultPolicy",
    "FusionWeights",
    "default_budget",
    "ContextPart",
    "ExtractionError",
    "ExtractiveSummariser",
    "Fact",
    "FactExtraction",
    "FactExtractor",
    "FactNotFound",
    "FactsPart",
    "MemoryRecordStore",
    "MessageTransform",
    "PartResult",
    "RecentTurns",
    "RecentWindow",
    "RuleFactExtractor",
    "Summariser",
    "Summary",
    "SummaryPart",
    "load_policy_config",
    "make_extraction",
    "make_policy",
]

# Memory (issue 3B).
__all__ += [
    "CacheAwareWindow",
    "CacheBreakpoints",
    "RecallPart",
    "RecallPolicy",
    "SteppedWindow",
    "ToolOutputPruning",
]

# The web page (issue 15): edits and regenerations, what the model saw.
__all__ += [
    "CurrentBranch",
    "NoContextRecord",
    "NothingToRevise",
    "SeenContext",
]


def __getattr__(name: str) -> object:
    """``PostgresStore`` is imported on first use: it needs the postgres extra (psycopg)."""
    if name == "PostgresStore":
        from .store.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module 'colloquy' has no attribute {name!r}")

# Claude's whole content model, and the OpenAI shape both ways (issue 14).
__all__ += [
    "DocumentBlock",
    "RedactedThinkingBlock",
    "SearchResultBlock",
    "ServerToolResultBlock",
    "ServerToolUseBlock",
    "ThinkingBlock",
    "ThinkingDelta",
    "UnknownBlock",
    "from_openai_messages",
    "openai_messages",
]
