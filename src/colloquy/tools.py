"""Tools the model may call: a name, a description, a JSON schema, and a Python callable.

Why infer the schema from the function: the signature and type hints already say what the tool
takes, and pydantic both writes the JSON schema from them and validates the model's input
against them, so a tool is an ordinary typed function.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from .errors import ToolError
from .messages import ToolResultBlock, ToolUseBlock
from .models.base import ToolSpec
from .telemetry.turns import tool_result, tool_span


def _input_model(fn: Callable[..., Any]) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    try:  # hints written as strings (``from __future__ import annotations``) resolved in fn's module
        signature = inspect.signature(fn, eval_str=True)
    except (NameError, TypeError, SyntaxError):
        signature = inspect.signature(fn)
    for name, param in signature.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolError(f"tool {fn.__name__!r}: *args/**kwargs cannot be described to a model")
        annotation = param.annotation if param.annotation is not inspect.Parameter.empty else Any
        default = param.default if param.default is not inspect.Parameter.empty else ...
        fields[name] = (annotation, default)
    return create_model(  # type: ignore[call-overload, no-any-return]
        f"{fn.__name__}_input", __config__=ConfigDict(extra="forbid"), **fields
    )


@dataclass
class Tool:
    """A callable the model may use. Build one with :meth:`from_function` or the :func:`tool`
    decorator; give ``input_schema`` by hand only for functions taking ``**kwargs``."""

    name: str
    description: str
    fn: Callable[..., Any]
    input_schema: dict[str, Any] = field(default_factory=dict)
    _validator: type[BaseModel] | None = None

    def __post_init__(self) -> None:
        # What the model will be told is checked here, where the tool is declared, not by
        # every later send: a name the APIs refuse, a schema too deep; and its text follows
        # the text rule (a lone surrogate from a docstring becomes U+FFFD), so the request
        # can always be encoded.
        spec = ToolSpec(name=self.name, description=self.description,
                        input_schema=self.input_schema)  # ToolError when invalid
        self.name, self.description, self.input_schema = (
            spec.name, spec.description, spec.input_schema)

    @classmethod
    def from_function(
        cls, fn: Callable[..., Any], name: str | None = None, description: str | None = None
    ) -> Tool:
        model = _input_model(fn)
        schema = model.model_json_schema()
        schema.pop("title", None)
        return cls(
            name=name or fn.__name__,
            description=description or inspect.getdoc(fn) or "",
            fn=fn,
            input_schema=schema,
            _validator=model,
        )

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, input_schema=self.input_schema)

    def run(self, call: ToolUseBlock) -> ToolResultBlock:
        """Run the tool on the model's input. Any failure becomes an ``is_error`` result the
        model can read and recover from, never an exception that loses the turn."""
        try:
            if self._validator is not None:
                args = self._validator.model_validate(call.input)
                kwargs = {k: getattr(args, k) for k in type(args).model_fields}
            else:
                kwargs = dict(call.input)
            out = self.fn(**kwargs)
        except ValidationError as e:
            return ToolResultBlock(
                tool_use_id=call.id, is_error=True,
                content=f"invalid input for {self.name}: {e.errors(include_url=False)}",
            )
        except Exception as e:  # noqa: BLE001 - the model is told, the turn goes on
            return ToolResultBlock(
                tool_use_id=call.id, is_error=True, content=f"{type(e).__name__}: {e}"
            )
        if not isinstance(out, str):
            out = json.dumps(out, default=str)
        return ToolResultBlock(tool_use_id=call.id, content=out)


def tool(
    fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None
) -> Any:
    """Decorator: ``@tool`` or ``@tool(name="...")`` turns a typed function into a :class:`Tool`."""
    if fn is None:
        return lambda f: Tool.from_function(f, name=name, description=description)
    return Tool.from_function(fn, name=name, description=description)


def as_tools(items: Sequence[Tool | Callable[..., Any]]) -> dict[str, Tool]:
    tools: dict[str, Tool] = {}
    for item in items:
        t = item if isinstance(item, Tool) else Tool.from_function(item)
        if t.name in tools:
            raise ToolError(f"two tools are named {t.name!r}")
        tools[t.name] = t
    return tools


def run_calls(tools: dict[str, Tool], calls: Sequence[ToolUseBlock]) -> list[ToolResultBlock]:
    """Answer every call, in order; an unknown tool gets an error result naming the real ones."""
    results = []
    for call in calls:
        t = tools.get(call.name)
        if t is None:
            results.append(ToolResultBlock(
                tool_use_id=call.id, is_error=True,
                content=f"no tool named {call.name!r}; available: {', '.join(sorted(tools)) or 'none'}",
            ))
        else:
            with tool_span(call, t.spec.description) as span:
                result = t.run(call)
                tool_result(span, result)
            results.append(result)
    return results
