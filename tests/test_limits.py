"""Context windows per model (colloquy.models.limits): the figure policies must never exceed."""

import pytest

from colloquy.models.limits import DEFAULT_CONTEXT_WINDOW, context_window, set_context_window


def test_known_models_by_longest_prefix() -> None:
    assert context_window("claude-sonnet-4-5-20250929") == 200_000
    assert context_window("gpt-4o-mini") == 128_000
    assert context_window("gpt-4.1-mini") == 1_047_576
    assert context_window("openai:gpt-5") == 400_000  # the provider prefix is ignored


def test_local_servers_and_unknown_models_get_the_default() -> None:
    assert context_window("ollama:llama3") == DEFAULT_CONTEXT_WINDOW
    assert context_window("some-new-model") == DEFAULT_CONTEXT_WINDOW
    assert context_window(None) == DEFAULT_CONTEXT_WINDOW


def test_set_context_window_overrides_a_local_model() -> None:
    set_context_window("llamacpp:tiny-test-model", 2048)
    assert context_window("llamacpp:tiny-test-model") == 2048
    assert context_window("llamacpp:other") == DEFAULT_CONTEXT_WINDOW
    with pytest.raises(ValueError):
        set_context_window("x", 0)
