"""A document's text is read in one place (DocumentBlock.text): a base64 ``text/plain``
document counts in every token budget as the same text sent as a plain-text source, and crosses
to OpenAI's shape as that text; the other text-bearing blocks (search results, content-source
documents, documents inside tool results) are counted by their text too."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from colloquy import Chat
from colloquy.messages import (STORED, DocumentBlock, Message, SearchResultBlock, TextBlock,
                               ToolResultBlock, ToolUseBlock)
from colloquy.context.validate import repair
from colloquy.models.anthropic import AnthropicModel
from colloquy.store import Store
from colloquy.openai_shape import openai_messages
from colloquy.tokens import estimate_block
from fake_anthropic import FakeAnthropic, message, text
from test_compat_anthropic import MODEL, Served, serve_claude

TEXT = "The quarterly report says revenue grew in every region but one. " * 40


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def b64_doc(text: str = TEXT, **extra: Any) -> DocumentBlock:
    return DocumentBlock(source={"type": "base64", "media_type": "text/plain", "data": b64(text)},
                         **extra)


def text_doc(text: str = TEXT, **extra: Any) -> DocumentBlock:
    return DocumentBlock(source={"type": "text", "media_type": "text/plain", "data": text},
                         **extra)


def test_a_base64_text_document_has_its_decoded_text() -> None:
    assert b64_doc().text == TEXT
    assert b64_doc("héllo ✓").text == "héllo ✓"
    # a row stored before the entry rules: data that is not base64 reads as no text, never raises
    legacy = DocumentBlock.model_validate(
        {"type": "document", "source": {"type": "base64", "media_type": "text/plain",
                                        "data": "not base64!"}}, context=STORED)
    assert legacy.text == ""
    pdf = DocumentBlock(source={"type": "base64", "media_type": "application/pdf",
                                "data": b64("%PDF-1.4 /Type /Page")})
    assert pdf.text == "", "a PDF's bytes are not its text"


def test_a_base64_text_document_counts_as_its_text() -> None:
    assert estimate_block(b64_doc()) == estimate_block(text_doc()) > 500
    titled = estimate_block(b64_doc(title="Report", context="Q3"))
    assert titled == estimate_block(text_doc(title="Report", context="Q3"))
    assert estimate_block(b64_doc(TEXT * 2)) > estimate_block(b64_doc())


@pytest.mark.parametrize("make", [b64_doc, text_doc, lambda: DocumentBlock(
    source={"type": "content", "content": [{"type": "text", "text": TEXT}]}), lambda: DocumentBlock(
    source={"type": "content", "content": TEXT})])
def test_text_inside_other_blocks_is_counted_by_its_text(make: Any) -> None:
    doc = make()
    assert doc.text == TEXT
    body = estimate_block(TextBlock(text=TEXT))
    assert estimate_block(doc) == body
    nested = ToolResultBlock(tool_use_id="t1", content=[doc])
    assert estimate_block(nested) == 6 + body, "a document a tool returned counts by its text"
    result = SearchResultBlock(source="kb://1", title="T", content=[TextBlock(text=TEXT)])
    assert estimate_block(result) >= body


def test_every_budget_sees_the_document(tmp_path: Path) -> None:
    chat = Chat("echo", store=None)
    short = chat.count_tokens(chat.next_request(Message(role="user", content=[
        b64_doc("a few words"), TextBlock(text="summarise")])))
    long = chat.count_tokens(chat.next_request(Message(role="user", content=[
        b64_doc(), TextBlock(text="summarise")])))
    plain = chat.count_tokens(chat.next_request(Message(role="user", content=[
        text_doc(), TextBlock(text="summarise")])))
    assert long == plain and long > short + 500


def test_openai_conversion_sends_the_same_text() -> None:
    out, notes = openai_messages("", [Message(role="user", content=[
        b64_doc(title="R"), TextBlock(text="summarise")])])
    assert out[0]["content"].startswith(f"Document: R\n\n{TEXT}")  # text parts join
    assert not any("dropped" in n for n in notes), notes


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    yield from serve_claude(tmp_path)


def test_the_anthropic_routes_count_tokens_counts_the_document(served: Served) -> None:
    def counted(source: dict[str, Any]) -> int:
        return served.client.messages.count_tokens(model=MODEL, messages=[{
            "role": "user", "content": [{"type": "document", "source": source},
                                        {"type": "text", "text": "summarise"}]}]).input_tokens

    as_base64 = counted({"type": "base64", "media_type": "text/plain", "data": b64(TEXT)})
    as_text = counted({"type": "text", "media_type": "text/plain", "data": TEXT})
    assert as_base64 == as_text > 500


def test_claude_is_sent_a_base64_text_document_as_plain_text(store: Store) -> None:
    # Anthropic's base64 document source is a PDF only: a base64 text document goes as a
    # "text" source of its decoded text (the request only; the log keeps what was sent)
    with FakeAnthropic() as fake:
        model = AnthropicModel(MODEL, api_key="sk-ant-test", base_url=fake.base_url,
                               max_retries=0)
        fake.enqueue(message(text("read it")), message(text("A title")),
                     message(text("again")))
        chat = Chat(model, store=store, session_id="c_doc")
        doc = b64_doc(title="Q3", citations={"enabled": True})
        nested = ToolResultBlock(tool_use_id="t1", content=[b64_doc("nested text")])
        assert chat.send([doc, TextBlock(text="summarise")]).text == "read it"
        sent = fake.requests[0].body["messages"][0]["content"][0]
        assert sent == {"type": "document", "title": "Q3", "citations": {"enabled": True},
                        "source": {"type": "text", "media_type": "text/plain", "data": TEXT}}
        assert chat.history()[0].message.content[0] == doc  # stored as it came
        assert chat.send("and again?").text == "again"  # the stored row, sent again
        assert fake.requests[-1].body["messages"][0]["content"][0] == sent
    # a document a tool returned, too
    fixed, _, _ = repair([Message(role="user", content=[TextBlock(text="q")]),
                          Message(role="assistant", content=[
                              ToolUseBlock(id="t1", name="f", input={})]),
                          Message(role="user", content=[nested])])
    part = fixed[2].content[0].content[0]  # type: ignore[union-attr, index]
    assert part.source == {"type": "text", "media_type": "text/plain", "data": "nested text"}
