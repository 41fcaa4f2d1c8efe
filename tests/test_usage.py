"""Usage, prices and cost, and the token counter's calibration against billed usage."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import threading
from datetime import datetime, timezone
from typing import Any

import pytest

from colloquy import usage as usage_mod
from colloquy.messages import ImageBlock, Message, TextBlock, ToolResultBlock, ToolUseBlock
from colloquy.tokens import (
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    REQUEST_OVERHEAD,
    TokenCounter,
    estimate_block,
    estimate_message,
    estimate_text,
    estimate_tools,
)
from colloquy.models.base import ToolSpec
from colloquy.usage import PRICES, Price, Usage, cost_of, price_for, set_price

# -- Usage ------------------------------------------------------------------------------------------


def test_usage_adds_and_totals() -> None:
    a = Usage(input_tokens=10, output_tokens=2, cache_write_tokens=100, cache_read_tokens=1000)
    b = Usage(input_tokens=5, output_tokens=1, cache_read_tokens=7)
    assert a + b == Usage(input_tokens=15, output_tokens=3, cache_write_tokens=100,
                          cache_read_tokens=1007)
    assert Usage.total([a, None, b, None]) == a + b
    assert Usage.total([]) == Usage()
    assert a.prompt_tokens == 10 + 100 + 1000, "the whole prompt: uncached, written, read"
    assert Usage().prompt_tokens == 0


# -- prices -----------------------------------------------------------------------------------------
# Figures are read from genai-prices' packaged snapshot (the source colloquy prices from), never
# copied into these tests: the tests check that colloquy asks it the right question.


def _snapshot_model(ref: str, provider_id: str | None = None) -> Any:
    from genai_prices import data_snapshot

    return data_snapshot.get_snapshot().find_provider_model(ref, None, provider_id, None)[1]


def _snapshot_cost(ref: str, usage: Usage, provider_id: str | None = None) -> float:
    import genai_prices

    return float(genai_prices.calc_price(genai_prices.Usage(
        input_tokens=usage.prompt_tokens, output_tokens=usage.output_tokens,
        cache_write_tokens=usage.cache_write_tokens, cache_read_tokens=usage.cache_read_tokens,
    ), ref, provider_id=provider_id).total_price)


def test_anthropic_cache_prices_are_1_25x_and_0_1x_of_input() -> None:
    p = Price.anthropic(3.0, 15.0)
    assert p.input == 3.0 and p.output == 15.0
    assert p.cache_write == pytest.approx(3.75)
    assert p.cache_read == pytest.approx(0.3)
    for name in ("claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5", "claude-3-5-haiku"):
        price = price_for(name)
        assert price is not None, name
        assert price.cache_write == pytest.approx(1.25 * price.input)
        assert price.cache_read == pytest.approx(0.1 * price.input)


def test_price_cost_is_per_million_tokens_per_kind() -> None:
    p = Price(input=2.0, output=10.0, cache_write=2.5, cache_read=0.2)
    assert p.cost(Usage(input_tokens=1_000_000)) == pytest.approx(2.0)
    assert p.cost(Usage(output_tokens=500_000)) == pytest.approx(5.0)
    assert p.cost(Usage(cache_write_tokens=2_000_000)) == pytest.approx(5.0)
    assert p.cost(Usage(cache_read_tokens=1_000_000)) == pytest.approx(0.2)
    u = Usage(input_tokens=1234, output_tokens=567, cache_write_tokens=89, cache_read_tokens=10_000)
    assert p.cost(u) == pytest.approx((1234 * 2 + 567 * 10 + 89 * 2.5 + 10_000 * 0.2) / 1e6)
    assert p.cost(Usage()) == 0


def test_a_cache_read_prefix_costs_ten_times_less() -> None:
    assert cost_of("claude-sonnet-4-6", Usage(input_tokens=10_000)) == pytest.approx(
        10 * cost_of("claude-sonnet-4-6", Usage(cache_read_tokens=10_000)))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("model", "ref", "provider_id"),
    [
        ("claude-sonnet-4-6", "claude-sonnet-4-6", "anthropic"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929", "anthropic"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5-20251101", "anthropic"),
        ("claude-haiku-4-5", "claude-haiku-4-5", "anthropic"),
        ("anthropic:claude-sonnet-4-6", "claude-sonnet-4-6", "anthropic"),
        ("gpt-4o", "gpt-4o", "openai"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18", "openai"),
        ("gpt-5", "gpt-5", "openai"),
        ("openai:gpt-4.1-mini", "gpt-4.1-mini", "openai"),
    ],
)
def test_claude_and_openai_prices_come_from_the_genai_prices_snapshot(
    model: str, ref: str, provider_id: str
) -> None:
    info = _snapshot_model(ref, provider_id)
    listed = info.get_prices(datetime.now(timezone.utc))
    price = price_for(model)
    assert price is not None
    assert price.input == pytest.approx(float(getattr(listed.input_mtok, "base", listed.input_mtok)))
    assert price.output == pytest.approx(float(getattr(listed.output_mtok, "base", listed.output_mtok)))
    assert price.cache_read == pytest.approx(float(getattr(
        listed.cache_read_mtok, "base", listed.cache_read_mtok)))
    # A call's cost is the snapshot's own calculation of its usage (cached tokens counted as
    # input the way genai-prices expects: inside input_tokens).
    u = Usage(input_tokens=1234, output_tokens=567, cache_write_tokens=890, cache_read_tokens=10_000)
    assert cost_of(model, u) == pytest.approx(_snapshot_cost(ref, u, provider_id))
    # ... which, below any tier, is the listed figures times the tokens of each kind.
    assert cost_of(model, u) == pytest.approx(price.cost(u))


def test_long_context_tiers_apply_per_call() -> None:
    """Claude Sonnet 4.5 bills every token of a call above 200k input tokens at its higher tier
    (genai-prices' tiers): the cost of a call is not base price x tokens."""
    big = Usage(input_tokens=300_000, output_tokens=1000)
    base = price_for("claude-sonnet-4-5")
    assert base is not None
    assert cost_of("claude-sonnet-4-5", big) == pytest.approx(_snapshot_cost("claude-sonnet-4-5", big))
    assert cost_of("claude-sonnet-4-5", big) > base.cost(big)  # type: ignore[operator]


def test_local_and_offline_models_are_free_and_unknown_models_have_no_price() -> None:
    from colloquy import EchoModel, FunctionModel, ScriptedModel, get_model
    from colloquy.memory.offline import ExtractiveSummariser, RuleFactExtractor

    u = Usage(input_tokens=10_000, output_tokens=1_000)
    for local in ("ollama:llama3", "ollama:llama3:8b", "vllm:Qwen/Qwen2.5-7B", "llamacpp:model",
                  "echo", "scripted", "function", "offline-facts", "offline:anything"):
        assert cost_of(local, u) == 0.0, local
        assert price_for(local) == usage_mod.FREE
    # Priced by the model that made the call, never by a bare name: a local server's "gpt-4o"
    # or an offline double called "claude-sonnet-4-6" costs nothing.
    local_model = get_model("ollama:llama3", environ={})
    for model in (local_model, get_model("vllm:gpt-4o", environ={}), EchoModel(),
                  ScriptedModel(["x"]), FunctionModel(lambda r: "x", name="claude-sonnet-4-6"),
                  ExtractiveSummariser(), RuleFactExtractor()):
        assert model.cost(u) == 0.0, model
        assert model.cost(u, "llama3") == 0.0, model
    assert local_model.cost(u, "gpt-4o") == 0.0, "a title call through a local client"
    assert price_for("mystery-model") is None
    assert cost_of("mystery-model", u) is None
    assert cost_of(None, u) is None
    assert cost_of("", u) is None
    assert cost_of("claude-sonnet-4-5", None) is None
    paid = get_model("claude-sonnet-4-6", api_key="sk-test", environ={})
    assert paid.cost(u) == cost_of("claude-sonnet-4-6", u) and paid.cost(u)
    assert paid.cost(u, "claude-haiku-4-5") == cost_of("claude-haiku-4-5", u)


def test_set_price_overrides_the_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage_mod, "PRICES", dict(PRICES))
    assert cost_of("acme-large-2", Usage(input_tokens=1)) is None
    set_price("acme-large", Price(input=1.0, output=2.0, cache_write=1.0, cache_read=0.5))
    assert cost_of("acme-large-2", Usage(input_tokens=1_000_000, output_tokens=1_000_000)) == 3.0
    set_price("claude-sonnet-4-5", Price.anthropic(100.0, 100.0))
    assert cost_of("claude-sonnet-4-5-20250929", Usage(input_tokens=1_000_000)) == 100.0
    assert price_for("claude-sonnet-4-5") == Price.anthropic(100.0, 100.0)
    set_price("ollama:llama3", Price(input=1.0, output=1.0, cache_write=1.0, cache_read=1.0))
    assert cost_of("ollama:llama3", Usage(input_tokens=1_000_000)) == 1.0, "a local server priced by hand"


def test_prices_need_no_network() -> None:
    """genai-prices can download newer data (UpdatePrices); colloquy only reads the snapshot
    packaged with it. A socket audit hook in a fresh interpreter proves no connection is tried
    while importing and pricing."""
    code = textwrap.dedent("""
        import sys
        def hook(event, args):
            if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
                raise SystemExit(f"network access: {event} {args}")
        sys.addaudithook(hook)
        from colloquy.usage import Usage, cost_of, price_for
        u = Usage(input_tokens=1000, output_tokens=100)
        for m in ("claude-sonnet-4-6", "gpt-4o", "claude-haiku-4-5-20251001", "mystery", "ollama:x"):
            price_for(m); cost_of(m, u)
        print("priced", cost_of("gpt-4o", u))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("priced 0.0")


# -- token estimates --------------------------------------------------------------------------------


def test_text_estimate_is_about_five_characters_per_token() -> None:
    # English prose is ~4.8 characters a token in cl100k_base (tests/test_tokens_scripts.py).
    assert estimate_text("") == 0
    assert estimate_text("a") == 1
    prose = "The quick brown fox jumps over the lazy dog and keeps running far away. " * 50
    assert len(prose) / 5 < estimate_text(prose) < len(prose) / 2.5
    assert estimate_text("x" * 4000) == 834
    assert estimate_text("!?" * 100) >= 150, "symbols cost more than letters"


def test_block_and_message_estimates() -> None:
    text = TextBlock(text="hello world")
    assert estimate_block(text) == estimate_text("hello world")
    assert estimate_block(ImageBlock(source={"type": "url", "url": "https://example.com/u.png"})) == IMAGE_TOKENS
    assert estimate_block(ToolUseBlock(id="t", name="f", input={"a": 1})) > 10
    assert estimate_block(ToolResultBlock(tool_use_id="t", content="ok")) == 6 + estimate_text("ok")
    assert estimate_block(ToolResultBlock(tool_use_id="t", content=[text])) == 6 + estimate_block(text)
    m = Message(role="user", content=[text, text])
    assert estimate_message(m) == MESSAGE_OVERHEAD + 2 * estimate_block(text)
    spec = ToolSpec(name="f", description="does f")
    assert estimate_tools([spec, spec]) == 2 * estimate_tools([spec]) > 0


def test_raw_counts_system_messages_and_extra() -> None:
    c = TokenCounter()
    msgs = [Message.user("hello there"), Message.assistant("hi")]
    assert c.raw() == REQUEST_OVERHEAD
    assert c.raw("sys prompt", msgs, extra=17) == (
        REQUEST_OVERHEAD + estimate_text("sys prompt") + sum(map(estimate_message, msgs)) + 17)
    blocks = [TextBlock(text="a b"), TextBlock(text="c")]
    assert c.raw(blocks) == REQUEST_OVERHEAD + estimate_text("a b") + estimate_text("c")
    assert c.count("never-seen", "sys prompt", msgs) == c.raw("sys prompt", msgs), "factor 1"


def test_a_window_sum_reads_the_memo_only_for_the_very_message() -> None:
    # estimate_messages reads memo hits inline: the same sum as estimate_message one by one,
    # for messages seen before or not, and an entry left under a reused id (another object)
    # is not taken for the message.
    from colloquy.tokens import _MEMO, estimate_messages

    seen = [Message.user("hello there"), Message.assistant("hi")]
    for m in seen:
        estimate_message(m)
    new = Message.user("a much longer message than the others, never estimated before")
    msgs = [*seen, new]
    assert estimate_messages(msgs) == sum(map(estimate_message, msgs))
    other = Message.user("x")
    _MEMO[id(other)] = (seen[0], 10_000)  # as if seen[0]'s id were now other's
    assert estimate_messages([other]) == MESSAGE_OVERHEAD + estimate_block(other.content[0])
    assert estimate_messages([]) == 0


# -- calibration ------------------------------------------------------------------------------------


def test_calibration_moves_the_factor_toward_actual_over_raw() -> None:
    c = TokenCounter()
    assert c.factor("m") == 1.0
    assert c.calibrate("m", raw_estimate=100, actual=150) == pytest.approx(1.5)
    assert c.factor("m") == pytest.approx(1.5), "the first observation is taken as is"
    # Each further observation moves the factor a step (ALPHA) toward the new ratio.
    new = c.calibrate("m", 100, 100)
    assert new == pytest.approx(0.8 * 1.5 + 0.2 * 1.0)
    assert 1.0 < new < 1.5
    for _ in range(60):
        c.calibrate("m", 200, 220)
    assert c.factor("m") == pytest.approx(1.1, abs=1e-3), "converges to the observed ratio"
    assert c.factor("other") == 1.0, "the factor is per model"
    assert c.factor(None) == 1.0


def test_calibration_is_clamped() -> None:
    c = TokenCounter()
    assert c.calibrate("hi", 100, 10_000) == TokenCounter.MAX_FACTOR == 3.0
    assert c.calibrate("lo", 100, 1) == TokenCounter.MIN_FACTOR == 0.5
    for _ in range(50):
        c.calibrate("hi", 10, 10_000)
        c.calibrate("lo", 10_000, 10)
    assert c.factor("hi") == pytest.approx(3.0)
    assert c.factor("lo") == pytest.approx(0.5)


def test_calibration_ignores_empty_observations() -> None:
    c = TokenCounter()
    c.calibrate("m", 100, 120)
    assert c.calibrate("m", 0, 500) == pytest.approx(1.2)
    assert c.calibrate("m", 100, 0) == pytest.approx(1.2)
    assert c.calibrate("m", -5, 10) == pytest.approx(1.2)
    assert c.factor("m") == pytest.approx(1.2)


def test_count_applies_the_factor() -> None:
    c = TokenCounter()
    msgs = [Message.user("some words to count")]
    raw = c.raw("sys", msgs)
    c.calibrate("m", 100, 133)
    assert c.count("m", "sys", msgs) == math.ceil(raw * 1.33)
    assert c.scale("m", 1000) == 1330
    assert c.scale("unknown", 1000) == 1000


def test_calibration_is_thread_safe() -> None:
    c = TokenCounter()
    c.calibrate("m", 100, 200)

    def work() -> None:
        for _ in range(500):
            c.calibrate("m", 100, 200)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.factor("m") == pytest.approx(2.0)
