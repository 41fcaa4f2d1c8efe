"""Claude's whole content model, kept and replayed (issue 14, item 1): thinking with its
signature, redacted thinking, documents (PDF base64 / URL, plain text, custom content, files)
with citations, search results, text that cites each kind of source, server tools and their
results, and block types colloquy does not know. Stored by every store, exported and imported,
counted, replayed to Claude unmodified (the fake Anthropic server checks signatures and the
tool-loop rules as the API does), and converted to OpenAI's shape with a note on what could not
cross."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from colloquy import Chat, MemoryStore, Reply, export_user, import_user
from colloquy.messages import (
    DocumentBlock,
    ImageBlock,
    Message,
    MessageList,
    RedactedThinkingBlock,
    SearchResultBlock,
    ServerToolResultBlock,
    ServerToolUseBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    UnknownBlock,
)
from colloquy.context.policies import FullHistory
from colloquy.models.anthropic import AnthropicModel
from colloquy.models.base import ModelRequest, ToolSpec
from colloquy.openai_shape import openai_messages
from colloquy.store import NewMessage, Store
from colloquy.tokens import PDF_PAGE_TOKENS, estimate_block, estimate_message
from colloquy.tools import tool
from fake_anthropic import (
    FakeAnthropic,
    char_location,
    cited_text,
    message,
    redacted_thinking,
    server_tool_use,
    sign,
    stream,
    text,
    thinking,
    tool_use,
    web_search_result,
)

PDF = base64.b64encode(b"%PDF-1.7\n1 0 obj <</Type /Pages>> 2 0 obj <</Type /Page>> "
                       b"3 0 obj <</Type /Page>> 4 0 obj <</Type /Page>>").decode()
PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}

#: One of each citation type the API sends (Anthropic's citations page).
CITATIONS: list[dict[str, Any]] = [
    {"type": "char_location", "cited_text": "grass is green", "document_index": 0,
     "document_title": "Facts", "start_char_index": 0, "end_char_index": 14},
    {"type": "page_location", "cited_text": "page two", "document_index": 1,
     "document_title": "Report", "start_page_number": 2, "end_page_number": 3},
    {"type": "content_block_location", "cited_text": "chunk", "document_index": 2,
     "document_title": None, "start_block_index": 0, "end_block_index": 1},
    {"type": "web_search_result_location", "cited_text": "Oslo is cold", "url": "https://x.example",
     "title": "Weather", "encrypted_index": "Eo8BCioIAhgB"},
    {"type": "search_result_location", "cited_text": "policy says", "search_result_index": 0,
     "source": "kb://policy", "title": "Policy", "start_block_index": 0, "end_block_index": 0},
]


def every_kind() -> list[Message]:
    """A conversation holding every kind of block, as the wire sends them."""
    wire: list[dict[str, Any]] = [
        {"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                            "data": "The grass is green."},
             "title": "Facts", "context": "from the wiki", "citations": {"enabled": True}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                            "data": PDF}, "title": "Report",
             "citations": {"enabled": True}, "cache_control": {"type": "ephemeral"}},
            {"type": "document", "source": {"type": "url", "url": "https://x.example/a.pdf"}},
            {"type": "document", "source": {"type": "content", "content": [
                {"type": "text", "text": "chunk one"}, {"type": "text", "text": "chunk two"}]}},
            {"type": "document", "source": {"type": "file", "file_id": "file_011"}},
            {"type": "search_result", "source": "kb://policy", "title": "Policy",
             "content": [{"type": "text", "text": "The policy says yes."}],
             "citations": {"enabled": True}},
            {"type": "text", "text": "What do these say?"},
        ]},
        {"role": "assistant", "content": [
            thinking("Let me read them."),
            redacted_thinking("r1"),
            server_tool_use("srvtoolu_1", "web_search", {"query": "oslo weather"}),
            web_search_result("srvtoolu_1", ("https://x.example", "Weather")),
            server_tool_use("srvtoolu_2", "web_fetch", {"url": "https://x.example/p"}),
            {"type": "web_fetch_tool_result", "tool_use_id": "srvtoolu_2", "content": {
                "type": "web_fetch_result", "url": "https://x.example/p", "retrieved_at": "2025",
                "content": {"type": "document", "source": {"type": "text", "media_type":
                                                           "text/plain", "data": "page"}}}},
            server_tool_use("srvtoolu_3", "code_execution", {"code": "print(1)"}),
            {"type": "code_execution_tool_result", "tool_use_id": "srvtoolu_3", "content": {
                "type": "code_execution_result", "stdout": "1\n", "stderr": "",
                "return_code": 0, "content": []}},
            {"type": "bash_code_execution_tool_result", "tool_use_id": "srvtoolu_3", "content": {
                "type": "bash_code_execution_result", "stdout": "", "stderr": "",
                "return_code": 0, "content": []}},
            cited_text("Grass is green, per the facts.", *CITATIONS),
            {"type": "container_upload", "file_id": "file_x"},  # a block colloquy does not know
            tool_use("toolu_1", "lookup", {"q": "more"}),
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "text", "text": "found"}, {"type": "image", "source": PNG},
                {"type": "search_result", "source": "kb://2", "title": "Two",
                 "content": [{"type": "text", "text": "second"}]},
                {"type": "tool_reference", "tool_name": "future_tool"}]},
        ]},
    ]
    return MessageList.validate_python(wire)


def test_every_kind_of_block_is_parsed_into_its_class_and_dumps_back_unchanged() -> None:
    msgs = every_kind()
    kinds = [type(b) for m in msgs for b in m.content]
    for cls in (DocumentBlock, SearchResultBlock, TextBlock, ThinkingBlock, RedactedThinkingBlock,
                ServerToolUseBlock, ServerToolResultBlock, UnknownBlock, ToolUseBlock,
                ToolResultBlock):
        assert cls in kinds, cls
    wire = json.loads(MessageList.dump_json(msgs, exclude_none=True))
    assert MessageList.validate_python(wire) == msgs
    # The wire form is exactly what came in: nothing added, nothing lost.
    assert [m.to_anthropic() for m in msgs] == wire
    result = msgs[2].content[0]
    assert isinstance(result, ToolResultBlock)
    assert [type(b) for b in result.content] == [TextBlock, ImageBlock, SearchResultBlock,
                                                 UnknownBlock]
    assert msgs[1].text == "Grass is green, per the facts."
    assert msgs[0].text == "What do these say?"


def test_bad_blocks_are_still_refused_clearly() -> None:
    with pytest.raises(ValueError, match="source needs a type"):
        DocumentBlock(source={"data": "x"})
    with pytest.raises(ValueError):
        Message.model_validate({"role": "assistant", "content": [{"type": "thinking",
                                                                  "thinking": "no signature"}]})
    with pytest.raises(ValueError):
        ServerToolResultBlock(type="tool_result", tool_use_id="x")
    with pytest.raises(ValueError):
        UnknownBlock(type="text")


def test_every_store_keeps_every_block_and_export_import_round_trips(store: Store) -> None:
    msgs = every_kind()
    store.create_conversation(id="c_all", user_id="ada")
    store.append("c_all", [NewMessage(message=m) for m in msgs])
    assert [sm.message for sm in store.load("c_all")] == msgs
    exported = json.loads(json.dumps(export_user(store, "ada")))
    other = MemoryStore()
    import_user(other, exported)
    assert [sm.message for sm in other.load("c_all")] == msgs


def test_token_estimates_count_documents_by_pages_and_thinking_by_text() -> None:
    doc = DocumentBlock(source={"type": "base64", "media_type": "application/pdf", "data": PDF})
    assert estimate_block(doc) == 3 * PDF_PAGE_TOKENS
    plain = DocumentBlock(source={"type": "text", "media_type": "text/plain", "data": "word " * 400})
    assert 300 < estimate_block(plain) < 700
    assert estimate_block(ThinkingBlock(thinking="step " * 100, signature="s")) >= 100
    cited = TextBlock(text="short", citations=CITATIONS)
    assert estimate_block(cited) == estimate_block(TextBlock(text="short")), \
        "citations are not billed as input"
    assert all(estimate_message(m) > 0 for m in every_kind())


# -- to OpenAI: carried where OpenAI can, and a note for the rest ----------------------------------


def test_openai_conversion_carries_what_it_can_and_notes_the_rest() -> None:
    out, notes = openai_messages("sys", every_kind())
    roles = [m["role"] for m in out]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    user = out[1]["content"]
    # PDFs as file parts, text documents and search results as text.
    assert {"type": "file", "file": {"filename": "Report.pdf",
                                     "file_data": f"data:application/pdf;base64,{PDF}"}} in user
    assert any(p["type"] == "text" and "The grass is green." in p["text"] for p in user)
    assert any(p["type"] == "text" and "The policy says yes." in p["text"] for p in user)
    assert out[2]["content"] == "Grass is green, per the facts."
    assert [c["id"] for c in out[2]["tool_calls"]] == ["toolu_1"]
    # The tool's image follows the tool messages in a user message: nothing silently lost.
    assert out[3]["tool_call_id"] == "toolu_1" and "found" in out[3]["content"]
    assert {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}} \
        in out[4]["content"]
    joined = " ".join(notes)
    for kind in ("thinking", "redacted_thinking", "server_tool_use", "web_search_tool_result",
                 "code_execution_tool_result", "container_upload", "tool_reference",
                 "document (url source)", "document (file source)", "citations", "image(s)"):
        assert kind in joined, kind


@pytest.mark.parametrize("block, carried, noted", [
    # A Files API image: OpenAI cannot fetch it, so it is noted, never sent as an empty data URL.
    ({"type": "image", "source": {"type": "file", "file_id": "file_1"}}, None, "image (file source)"),
    # A base64 text document crosses as its decoded text.
    ({"type": "document", "source": {"type": "base64", "media_type": "text/plain",
                                     "data": base64.b64encode(b"hello there").decode()}},
     "hello there", "1 document"),
    # A content-source document: its text crosses, the image inside it is named as left out.
    ({"type": "document", "source": {"type": "content", "content": [
        {"type": "text", "text": "inner words"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}},
     "inner words", "image inside a document"),
])
def test_openai_conversion_never_loses_a_block_part_without_a_note(
        block: dict[str, Any], carried: str | None, noted: str) -> None:
    message = Message.model_validate({"role": "user", "content": [block, {"type": "text", "text": "q"}]})
    out, notes = openai_messages("", [message])
    sent = json.dumps(out)
    assert "data:image/png;base64,\"" not in sent and "base64,\"}" not in sent
    if carried is not None:
        assert carried in sent
    assert any(noted in n for n in notes), notes


def test_openai_model_reports_the_loss_on_the_reply(tmp_path: Any) -> None:
    from fake_openai import FakeOpenAI, Turn

    from colloquy.models.openai import OpenAIModel

    with FakeOpenAI() as server:
        server.push(Turn(text="done"))
        model = OpenAIModel("gpt-4o", api_key="sk-test", base_url=server.base_url)
        store = MemoryStore()
        store.create_conversation(id="c1")
        store.append("c1", [NewMessage(message=m) for m in every_kind()])
        # The whole log (the default policy's budget would leave these large blocks out).
        reply = Chat(model, store=store, session_id="c1", title_model=False,
                     policy=FullHistory()).send("and now?")
    assert reply.text == "done"
    assert any("web_search_tool_result" in n for n in reply.notes)
    assert not any("thinking" in n for n in reply.notes), "earlier turns send no thinking at all"
    assert any("after the tool results" in n for n in reply.notes)
    sent = server.last.body["messages"]
    assert "iVBORw0KGgo=" in json.dumps(sent)


# -- replayed to Claude, unmodified, as the API requires --------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


def claude(fake: FakeAnthropic) -> AnthropicModel:
    return AnthropicModel("claude-sonnet-4-6", api_key="sk-ant-test", base_url=fake.base_url,
                          max_retries=0)


def turn(chat: Chat, how: str, content: str, **options: Any) -> tuple[list[Any], Reply]:
    """One turn by ``how``: the sync API (send, stream) or the async one (asend, astream: the
    async driver and the SDK's async client), as (the streamed events, the reply)."""
    if how == "send":
        return [], chat.send(content, **options)
    if how == "stream":
        events = list(chat.stream(content, **options))
    elif how == "asend":
        return [], asyncio.run(chat.asend(content, **options))
    else:
        async def collect() -> list[Any]:
            return [e async for e in chat.astream(content, **options)]

        events = asyncio.run(collect())
    assert isinstance(events[-1], Reply)
    return events[:-1], events[-1]


@pytest.mark.parametrize("how", ["send", "stream", "asend", "astream"])
def test_a_reply_with_every_kind_of_block_is_stored_whole_and_replayed_byte_for_byte(
    fake: FakeAnthropic, how: str
) -> None:
    blocks = [thinking("Let me search."), redacted_thinking("r9"),
              server_tool_use("srvtoolu_1", "web_search", {"query": "oslo"}),
              web_search_result("srvtoolu_1", ("https://x.example", "Weather")),
              cited_text("Oslo is cold.", char_location("Oslo is cold")),
              {"type": "future_block", "payload": {"a": [1, 2]}}]
    fake.enqueue(stream(*blocks) if "stream" in how else message(*blocks), message(text("ok")))
    chat = Chat(claude(fake), store=MemoryStore(), title_model=False, thinking=2048)
    _, reply = turn(chat, how, "weather in Oslo?")
    stored = chat.history()[-1].message
    assert stored.to_anthropic()["content"] == blocks
    assert reply.message.to_anthropic()["content"] == blocks
    assert reply.text == "Oslo is cold."

    chat.send("and tomorrow?")
    replayed = fake.requests[-1].body["messages"][1]["content"]
    # An earlier turn: its thinking is left out (allowed, and not billed); everything else goes
    # back exactly as it came.
    assert replayed == blocks[2:]


@tool
def lookup(q: str) -> str:
    """Look something up."""
    return f"result for {q}"


def test_a_tool_round_with_thinking_sends_the_thinking_back_unmodified(fake: FakeAnthropic) -> None:
    fake.enqueue(
        message(thinking("I need the tool."), text("Checking."),
                tool_use("toolu_1", "lookup", {"q": "x"}), stop_reason="tool_use"),
        message(thinking("Now I know."), text("It is x.")),
        message(text("Sure.")),
    )
    chat = Chat(claude(fake), store=MemoryStore(), title_model=False, tools=[lookup], thinking=2048, max_tokens=500)
    reply = chat.send("look up x")
    assert reply.text == "It is x." and reply.rounds == 2
    first, second = (r.body for r in fake.requests)
    assert first["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert first["max_tokens"] == 2048 + 500, "the answer keeps its own allowance"
    loop = second["messages"][1]["content"]
    assert loop[0] == {"type": "thinking", "thinking": "I need the tool.",
                       "signature": sign("I need the tool.")}
    # The next turn: both thinking blocks of the finished turn are left out.
    chat.send("thanks", thinking=0)
    third = fake.requests[-1].body
    assert "thinking" not in third
    assert not any(b["type"] == "thinking" for m in third["messages"]
                   for b in (m["content"] if isinstance(m["content"], list) else []))
    assert [len(third["messages"])] == [5]


def test_the_fake_refuses_what_the_api_refuses_so_the_replay_rules_are_real(
    fake: FakeAnthropic,
) -> None:
    """Without colloquy's replay rules these requests would fail: the fake speaks the API."""
    model = claude(fake)
    loop = [Message.user("go"),
            Message(role="assistant", content=[TextBlock(text="x"),
                                               ToolUseBlock(id="t1", name="lookup")]),
            Message(role="user", content=[ToolResultBlock(tool_use_id="t1", content="r")])]
    from colloquy.errors import BadRequestError

    with pytest.raises(BadRequestError, match="must start with a thinking block"):
        model.request(ModelRequest(model="claude-sonnet-4-6", messages=loop, thinking=1024,
                                   max_tokens=2000))
    altered = [Message.user("go"), Message(role="assistant", content=[
        ThinkingBlock(thinking="edited", signature=sign("original")),
        ToolUseBlock(id="t1", name="lookup")]), loop[2]]
    with pytest.raises(BadRequestError, match="signature"):
        model.request(ModelRequest(model="claude-sonnet-4-6", messages=altered, thinking=1024,
                                   max_tokens=2000))


def test_a_loop_that_began_without_thinking_is_continued_without_it(fake: FakeAnthropic) -> None:
    """A client-tool loop (the compatible routes) that began with thinking off cannot be
    continued with thinking on: colloquy turns it off for that call and says so."""
    fake.enqueue(message(text("Calling."), tool_use("toolu_1", "lookup", {"q": "x"}),
                         stop_reason="tool_use"),
                 message(text("Done.")))
    spec = ToolSpec(name="lookup")
    chat = Chat(claude(fake), store=MemoryStore(), title_model=False)
    first = chat.send("go", tools=[spec])
    assert first.stop_reason == "tool_use" and first.message.tool_uses[0].id == "toolu_1"
    reply = chat.send([ToolResultBlock(tool_use_id="toolu_1", content="r")], tools=[spec],
                      thinking=2048)
    assert reply.text == "Done."
    assert "thinking" not in fake.requests[-1].body
    assert any("thinking off for this call" in n for n in reply.notes)


@pytest.mark.parametrize("how", ["send", "asend"])
def test_pause_turn_is_continued_and_the_parts_make_one_reply(fake: FakeAnthropic,
                                                              how: str) -> None:
    search = ToolSpec.from_anthropic({"type": "web_search_20250305", "name": "web_search",
                                      "max_uses": 3})
    part1 = [server_tool_use("srvtoolu_1", "web_search", {"query": "a"}),
             web_search_result("srvtoolu_1", ("https://a.example", "A"))]
    fake.enqueue(message(*part1, stop_reason="pause_turn"), message(text("Found A.")))
    chat = Chat(claude(fake), store=MemoryStore(), title_model=False)
    _, reply = turn(chat, how, "search a", tools=[search])
    assert reply.text == "Found A." and reply.stop_reason == "end_turn"
    assert reply.message.to_anthropic()["content"] == [*part1, text("Found A.")]
    first, second = (r.body for r in fake.requests)
    assert first["tools"] == [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]
    assert second["messages"][-1] == {"role": "assistant", "content": part1}


@pytest.mark.parametrize("how", ["stream", "astream"])
def test_thinking_streams_as_its_own_events_before_the_text(fake: FakeAnthropic,
                                                            how: str) -> None:
    block = thinking("Pondering the question at length.")
    fake.enqueue(stream(block, text("Answer.")))
    from colloquy.models import ThinkingDelta

    chat = Chat(claude(fake), store=MemoryStore(), title_model=False, thinking=1024)
    events, reply = turn(chat, how, "q")
    # The block's signature ends its thinking (a re-streaming route passes it on).
    assert [e.signature for e in events if isinstance(e, ThinkingDelta) and e.signature] \
        == [block["signature"]]
    assert reply.message.to_anthropic()["content"][0] == block
    kinds = ["thinking" if isinstance(e, ThinkingDelta) else "text" if isinstance(e, str)
             else "other" for e in events]
    assert kinds[0] == "thinking" and "other" not in kinds
    assert kinds.index("text") > max(i for i, k in enumerate(kinds) if k == "thinking")
    assert "".join(e.thinking for e in events if isinstance(e, ThinkingDelta)) \
        == "Pondering the question at length."
    assert "".join(e for e in events if isinstance(e, str)) == "Answer."


def test_temperature_is_not_sent_with_thinking(fake: FakeAnthropic) -> None:
    fake.enqueue(message(thinking("t"), text("a")))
    reply = Chat(claude(fake), store=MemoryStore(), title_model=False, temperature=0.2, thinking=1024).send("q")
    assert "temperature" not in fake.requests[0].body
    assert any("temperature not sent" in n for n in reply.notes)


def test_a_thinking_budget_below_the_api_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1024"):
        Chat("echo", store=MemoryStore(), title_model=False, thinking=100)
    with pytest.raises(ValueError, match="at least 1024"):
        Chat("echo", store=MemoryStore(), title_model=False).send("q", thinking=10)


@pytest.mark.parametrize("how", ["stream", "astream"])
def test_a_reply_cut_while_thinking_bills_the_thinking_it_streamed(fake: FakeAnthropic,
                                                                   how: str) -> None:
    """Thinking tokens are output tokens: a caller that goes away while Claude thinks (before
    any answer text) leaves a cut reply billed for the thinking streamed so far, not for 0."""
    from colloquy.models import ThinkingDelta
    from colloquy.tokens import estimate_text

    thought = "Weighing every option in turn before answering. " * 40
    fake.enqueue(stream(thinking(thought), text("Answer.")))
    chat = Chat(claude(fake), store=MemoryStore(), title_model=False, thinking=1024)
    seen: list[str] = []
    if how == "stream":
        events = chat.stream("q")
        for event in events:
            if isinstance(event, ThinkingDelta) and event.thinking:
                seen.append(event.thinking)
                if len(seen) == 10:
                    break
        events.close()
    else:
        async def cut() -> None:
            events = chat.astream("q")
            async for event in events:
                if isinstance(event, ThinkingDelta) and event.thinking:
                    seen.append(event.thinking)
                    if len(seen) == 10:
                        break
            await events.aclose()

        asyncio.run(cut())
    stored = chat.history()[-1]
    assert stored.role == "assistant" and stored.meta["stop_reason"] == "cancelled"
    assert stored.usage is not None and stored.usage.estimated
    assert stored.usage.output_tokens >= estimate_text("".join(seen)) > 0
    assert stored.cost_usd and stored.cost_usd > 0
