"""The OpenAI chat-completions shape, both ways, and what it cannot carry.

colloquy keeps conversations in the Anthropic Messages shape (colloquy.messages). This module is
the one edge where they meet OpenAI's ``messages`` list:

* :func:`openai_messages` converts (system, messages) *to* OpenAI's shape for an OpenAI model
  (or any OpenAI-compatible server) and says, in notes, what did not cross: thinking blocks,
  server-tool blocks, citations, documents it cannot express, block types colloquy does not
  know. A note ends up on the reply (never a silent loss). Images a tool returned are carried in
  a user message right after the tool messages, because OpenAI's tool messages take text only.
* :func:`from_openai_messages` converts an OpenAI client's request messages *into* colloquy
  messages (the OpenAI-compatible route): text and ``image_url`` parts (data and https URLs),
  ``file`` parts holding a PDF, assistant ``tool_calls`` and ``tool`` messages.

OpenAI's rule that every assistant ``tool_calls`` message is followed by one ``tool`` message
per call, before anything else, holds for every output of :func:`openai_messages`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from .errors import InvalidTextError, ToolError
from .messages import (
    MAX_JSON_DEPTH,
    ContentBlock,
    DocumentBlock,
    ImageBlock,
    Message,
    SearchResultBlock,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    json_text_depth,
    system_text,
)
from .models.base import ToolSpec


class OpenAIShapeError(ValueError):
    """An OpenAI request message colloquy cannot take (``param`` names the field)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# ---------------------------------------------------------------------------------------------
# colloquy -> OpenAI
# ---------------------------------------------------------------------------------------------


def _image_url(block: ImageBlock) -> str:
    src = block.source
    if src.get("type") == "url":
        return str(src["url"])
    return f"data:{src.get('media_type', 'image/png')};base64,{src.get('data', '')}"


class _Losses:
    """What a conversion left out or changed, by kind, turned into a few readable notes."""

    def __init__(self) -> None:
        self.dropped: Counter[str] = Counter()
        self.as_text: Counter[str] = Counter()
        self.moved_images = 0
        self.citations = 0

    def notes(self) -> list[str]:
        out: list[str] = []
        if self.dropped:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.dropped.items()))
            out.append(f"not sent to the OpenAI-shaped model (no equivalent there): {kinds}")
        if self.as_text:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.as_text.items()))
            out.append(f"sent as plain text to the OpenAI-shaped model: {kinds}")
        if self.citations:
            out.append(f"citations of {self.citations} text block(s) not sent (OpenAI has none)")
        if self.moved_images:
            out.append(f"{self.moved_images} image(s) a tool returned sent in a user message "
                       "after the tool results (OpenAI tool messages carry text only)")
        return out


def _document_part(block: DocumentBlock, losses: _Losses) -> dict[str, Any] | None:
    """A document as an OpenAI content part: a PDF as a ``file`` part, text as a text part."""
    src = block.source
    kind = src.get("type")
    if kind == "base64" and src.get("media_type") == "application/pdf":
        name = (block.title or "document").strip() or "document"
        if not name.lower().endswith(".pdf"):
            name += ".pdf"
        return {"type": "file", "file": {
            "filename": name, "file_data": f"data:application/pdf;base64,{src.get('data', '')}"}}
    text = block.text
    if kind == "content" and isinstance(src.get("content"), list):
        for part in src["content"]:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                losses.dropped[f"{_kind_of(part)} inside a document"] += 1
    if text:
        losses.as_text["document"] += 1
        head = "\n\n".join(p for p in (block.title, block.context) if p)
        return {"type": "text", "text": f"Document: {head}\n\n{text}" if head else text}
    losses.dropped[f"document ({kind} source)"] += 1
    return None


def _user_part(block: ContentBlock, losses: _Losses) -> dict[str, Any] | None:
    if isinstance(block, TextBlock):
        if block.citations:
            losses.citations += 1
        return {"type": "text", "text": block.text}
    if isinstance(block, ImageBlock):
        if block.source.get("type") not in ("url", "base64"):
            # e.g. a Files API file_id: OpenAI cannot fetch Anthropic's files.
            losses.dropped[f"image ({block.source.get('type')} source)"] += 1
            return None
        return {"type": "image_url", "image_url": {"url": _image_url(block)}}
    if isinstance(block, DocumentBlock):
        return _document_part(block, losses)
    if isinstance(block, SearchResultBlock):
        losses.as_text["search_result"] += 1
        return {"type": "text", "text": f"Search result: {block.title} ({block.source})\n\n{block.text}"}
    losses.dropped[_kind(block)] += 1
    return None


def _kind(block: Any) -> str:
    return str(getattr(block, "type", type(block).__name__))


def _kind_of(part: Any) -> str:
    """The ``type`` of a raw content part (a dict), for notes."""
    return str(part.get("type") or "part") if isinstance(part, dict) else type(part).__name__


def _tool_message(result: ToolResultBlock, losses: _Losses) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``tool`` message answering one call, and the parts it could not hold (images,
    PDFs), for the user message that follows the tool messages."""
    texts: list[str] = []
    extra: list[dict[str, Any]] = []
    if isinstance(result.content, str):
        texts.append(result.content)
    else:
        for part in result.content:
            if isinstance(part, TextBlock):
                texts.append(part.text)
                continue
            converted = _user_part(part, losses)
            if converted is None:
                continue
            if converted["type"] == "text":
                texts.append(converted["text"])
            else:
                if isinstance(part, ImageBlock):
                    losses.moved_images += 1
                extra.append(converted)
    content = "\n".join(texts)
    if result.is_error:
        content = f"[tool error] {content}"
    if extra:
        content += ("\n" if content else "") + f"({len(extra)} attachment(s) follow in the next user message)"
        extra.insert(0, {"type": "text", "text": f"Attachments returned by tool call {result.tool_use_id}:"})
    return {"role": "tool", "tool_call_id": result.tool_use_id, "content": content}, extra


def openai_messages(
    system: str | list[TextBlock], messages: list[Message]
) -> tuple[list[dict[str, Any]], list[str]]:
    """(system, messages) as OpenAI's ``messages`` list, and notes on what did not cross.

    tool_use blocks become the assistant's ``tool_calls``; each tool_result becomes a
    ``role: "tool"`` message right after the assistant message that asked for it; images and
    PDFs inside tool results follow in a user message; thinking, server-tool and unknown blocks
    are left out (noted); cache_control markers have no OpenAI equivalent and are dropped.
    """
    losses = _Losses()
    out: list[dict[str, Any]] = []
    sys_text = system_text(system)
    if sys_text:
        out.append({"role": "system", "content": sys_text})
    for m in messages:
        if m.role == "assistant":
            texts: list[str] = []
            calls: list[dict[str, Any]] = []
            for b in m.content:
                if isinstance(b, TextBlock):
                    texts.append(b.text)
                    if b.citations:
                        losses.citations += 1
                elif isinstance(b, ToolUseBlock):
                    calls.extend(tool_calls(Message(role="assistant", content=[b])))
                else:  # thinking, server tools, documents, unknown kinds
                    losses.dropped[_kind(b)] += 1
            if not texts and not calls:
                continue  # nothing OpenAI can carry (e.g. only thinking)
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
            continue
        parts: list[dict[str, Any]] = []
        for b in m.content:
            if isinstance(b, ToolResultBlock):
                tool_msg, extra = _tool_message(b, losses)
                out.append(tool_msg)
                parts.extend(extra)
        for b in m.content:
            if not isinstance(b, ToolResultBlock):
                part = _user_part(b, losses)
                if part is not None:
                    parts.append(part)
        if not parts:
            continue
        if all(p["type"] == "text" for p in parts):
            out.append({"role": "user", "content": "\n\n".join(p["text"] for p in parts)})
        else:
            out.append({"role": "user", "content": parts})
    return out, losses.notes()


def to_openai_messages(
    system: str | list[TextBlock], messages: list[Message]
) -> list[dict[str, Any]]:
    """Just the messages of :func:`openai_messages` (the notes are the adapter's to report)."""
    return openai_messages(system, messages)[0]


# ---------------------------------------------------------------------------------------------
# OpenAI -> colloquy
# ---------------------------------------------------------------------------------------------

_DATA_URL = re.compile(r"^data:(?P<media>[\w.+-]+/[\w.+-]+)(?:;[^,;]*)*;base64,(?P<data>.*)$", re.S)


def _image_block(url: str, param: str) -> ImageBlock:
    found = _DATA_URL.match(url)
    if found:
        return ImageBlock(source={"type": "base64", "media_type": found["media"],
                                  "data": found["data"]})
    if url.startswith(("https://", "http://")):
        return ImageBlock(source={"type": "url", "url": url})
    raise OpenAIShapeError("an image_url must be a data URL (data:image/...;base64,...) or an "
                           "http(s) URL", param)


def _file_block(file: Any, param: str) -> DocumentBlock:
    if not isinstance(file, dict) or not isinstance(file.get("file_data"), str):
        raise OpenAIShapeError("a file part needs file.file_data (uploaded file ids are "
                               "OpenAI's own and cannot be read here)", param)
    data = file["file_data"]
    found = _DATA_URL.match(data)
    media, payload = (found["media"], found["data"]) if found else ("application/pdf", data)
    if media != "application/pdf":
        raise OpenAIShapeError(f"file parts must be PDFs, not {media}", param)
    title = file.get("filename") if isinstance(file.get("filename"), str) else None
    return DocumentBlock(source={"type": "base64", "media_type": media, "data": payload},
                         title=title)


def content_blocks(content: Any, param: str) -> list[ContentBlock]:
    """An OpenAI message's ``content`` (a string or a list of parts) as colloquy blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [TextBlock(text=content)] if content else []
    if not isinstance(content, list):
        raise OpenAIShapeError("content must be a string or a list of parts", param)
    blocks: list[ContentBlock] = []
    for i, part in enumerate(content):
        where = f"{param}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                blocks.append(TextBlock(text=part["text"]))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise OpenAIShapeError("image_url.url is missing", where)
            blocks.append(_image_block(url, where))
        elif kind == "file":
            blocks.append(_file_block(part.get("file"), where))
        elif kind == "text":
            raise OpenAIShapeError("a text part needs its text (a string)", f"{where}.text")
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            blocks.append(TextBlock(text=part["refusal"]))
        else:
            raise OpenAIShapeError(
                f"content part type {kind!r} is not supported: send text, image_url or file (PDF)",
                where)
    return blocks


def _arguments(raw: Any, param: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str) or not raw.strip():
        return {}
    if json_text_depth(raw) > MAX_JSON_DEPTH:  # before the parser, which recurses
        raise OpenAIShapeError(
            f"the arguments nest JSON deeper than {MAX_JSON_DEPTH} levels "
            "(colloquy.messages.MAX_JSON_DEPTH)", param)
    try:
        value = json.loads(raw)
    except ValueError:
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"_raw": raw}


def _tool_calls(calls: Any, param: str) -> list[ContentBlock]:
    if not isinstance(calls, list):
        raise OpenAIShapeError("tool_calls must be a list", param)
    blocks: list[ContentBlock] = []
    for i, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(call.get("id"), str) \
                or not isinstance(fn.get("name"), str):
            raise OpenAIShapeError("a tool call needs an id and function.name", f"{param}[{i}]")
        blocks.append(ToolUseBlock(id=call["id"], name=fn["name"],
                                   input=_arguments(fn.get("arguments"),
                                                   f"{param}[{i}].function.arguments")))
    return blocks


def tools_from_openai(tools: Any) -> list[ToolSpec]:
    """An OpenAI request's ``tools`` (``{"type": "function", "function": {"name",
    "description", "parameters"}}``) as colloquy's tool specs (the client runs them)."""
    if not isinstance(tools, list):
        raise OpenAIShapeError("tools must be a list", "tools")
    specs: list[ToolSpec] = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
                or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise OpenAIShapeError("a tool is {\"type\": \"function\", \"function\": {\"name\", "
                                   "\"description\", \"parameters\"}}", f"tools[{i}]")
        schema = fn.get("parameters")
        if schema is not None and not isinstance(schema, dict):
            raise OpenAIShapeError("function.parameters is a JSON schema object",
                                   f"tools[{i}].function.parameters")
        try:
            specs.append(ToolSpec(name=fn["name"], description=str(fn.get("description") or ""),
                                  input_schema=schema or {"type": "object", "properties": {}}))
        except ToolError as e:
            field = "parameters" if e.field == "input_schema" else e.field or "name"
            raise OpenAIShapeError(str(e), f"tools[{i}].function.{field}") from None
    return specs


def tool_calls(message: Message) -> list[dict[str, Any]]:
    """A reply's tool_use blocks as OpenAI's ``tool_calls`` (arguments as a JSON string)."""
    return [{"id": b.id, "type": "function",
             "function": {"name": b.name, "arguments": json.dumps(b.input, ensure_ascii=False)}}
            for b in message.tool_uses]


def from_openai_messages(raw: list[dict[str, Any]]) -> tuple[str | None, list[Message]]:
    """An OpenAI request's ``messages`` as (the system text, colloquy messages).

    ``system`` and ``developer`` messages join into the system text (None when there are none,
    "" when they are blank);
    consecutive ``tool`` messages become one user message of tool_result blocks; every message
    keeps its place otherwise. Raises :class:`OpenAIShapeError` naming the bad field.
    """
    system: list[str] = []
    saw_system = False
    out: list[Message] = []
    pending: list[ContentBlock] = []  # tool results waiting for the next non-tool message

    def flush() -> None:
        if pending:
            out.append(Message(role="user", content=list(pending)))
            pending.clear()

    for i, m in enumerate(raw):
        param = f"messages[{i}]"
        role = m.get("role")
        if role in ("system", "developer"):
            saw_system = True
            text = "\n\n".join(b.text for b in content_blocks(m.get("content"), f"{param}.content")
                               if isinstance(b, TextBlock))
            if text.strip():
                system.append(text)
            continue
        if role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str):
                raise OpenAIShapeError("a tool message needs tool_call_id", f"{param}.tool_call_id")
            parts = content_blocks(m.get("content"), f"{param}.content")
            body: str | list[Any] = parts[0].text if len(parts) == 1 and isinstance(
                parts[0], TextBlock) else parts
            pending.append(ToolResultBlock(tool_use_id=call_id, content=body))
            continue
        flush()
        if role == "user":
            blocks = content_blocks(m.get("content"), f"{param}.content")
        elif role == "assistant":
            blocks = content_blocks(m.get("content"), f"{param}.content")
            if m.get("tool_calls"):
                blocks += _tool_calls(m["tool_calls"], f"{param}.tool_calls")
        else:
            raise OpenAIShapeError(f"unknown role {role!r}", f"{param}.role")
        if blocks:
            out.append(Message(role=role, content=blocks))
        elif role == "user" and i == len(raw) - 1:  # the new message: empty, not missing
            raise InvalidTextError("the message is empty")
    flush()
    # A blank system message is a persona of nothing, not the lack of one.
    return ("\n\n".join(system) if system else ("" if saw_system else None)), out


__all__ = [
    "OpenAIShapeError",
    "content_blocks",
    "from_openai_messages",
    "openai_messages",
    "to_openai_messages",
    "tool_calls",
    "tools_from_openai",
]
