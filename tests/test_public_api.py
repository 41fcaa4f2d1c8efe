"""``colloquy.__all__`` is the public API: complete, importable, and covering every name the
documentation (README, docs/, docstrings) tells users to import or use."""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import re
import types
import typing
from pathlib import Path

import pytest

import colloquy
from colloquy import errors

ROOT = Path(__file__).resolve().parents[1]
#: User-facing documentation (docs/HELPERS.md is for contributors, about internals).
DOCS = [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        if p.exists() and p.name != "HELPERS.md"]


@functools.cache
def submodules() -> tuple[types.ModuleType, ...]:
    """Every importable colloquy module (one needing a missing optional extra is skipped)."""
    mods = [colloquy]
    for info in pkgutil.walk_packages(colloquy.__path__, "colloquy."):
        if info.name.endswith("__main__"):
            continue
        try:
            mods.append(importlib.import_module(info.name))
        except ImportError:
            continue
    return tuple(mods)


def test_every_name_in_all_is_importable() -> None:
    assert len(colloquy.__all__) == len(set(colloquy.__all__)), "no duplicates"
    for name in colloquy.__all__:
        assert hasattr(colloquy, name), name
        exec(f"from colloquy import {name}", {})


def test_star_import_gives_exactly_all() -> None:
    ns: dict[str, object] = {}
    exec("from colloquy import *", ns)
    assert set(ns) - {"__builtins__"} == set(colloquy.__all__)


def test_every_public_name_of_the_package_is_in_all() -> None:
    public = {
        name for name, value in vars(colloquy).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert public - set(colloquy.__all__) == set(), "bound in colloquy but missing from __all__"


def test_the_core_api_is_exported() -> None:
    core = {
        "Chat", "Reply", "Message", "TextBlock", "ImageBlock", "ToolUseBlock", "ToolResultBlock",
        "Store", "MemoryStore", "SQLiteStore", "open_store", "Conversation",
        "RollingWindow", "TokenBudget", "FullHistory", "ContextPolicy", "Context", "ContextInput",
        "Model", "ModelRequest", "ModelResponse", "EchoModel", "ScriptedModel", "FunctionModel",
        "get_model", "tool_call", "Tool", "tool", "Usage", "Price", "cost_of", "set_price",
        "TokenCounter", "to_openai_messages",
    }
    assert core - set(colloquy.__all__) == set()


def test_every_error_class_is_exported() -> None:
    error_classes = {
        name for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, errors.ColloquyError)
    }
    assert "ColloquyError" in error_classes and len(error_classes) >= 15
    assert error_classes - set(colloquy.__all__) == set()
    for name in error_classes:
        assert getattr(colloquy, name) is getattr(errors, name)


def test_exported_objects_are_the_real_ones() -> None:
    from colloquy.chat import Chat
    from colloquy.context.policies import RollingWindow
    from colloquy.store.sqlite import SQLiteStore

    assert colloquy.Chat is Chat
    assert colloquy.RollingWindow is RollingWindow
    assert colloquy.SQLiteStore is SQLiteStore


# -- what the documentation uses --------------------------------------------------------------------

def imported_names(text: str) -> set[str]:
    """Names in every ``from colloquy import a, b`` (one line or parenthesised)."""
    names: set[str] = set()
    for m in re.finditer(r"from colloquy import (\([^)]*\)|[^\n]*)", text):
        chunk = m.group(1).strip("()")
        for part in chunk.split(","):
            part = part.split("#")[0].strip().split(" as ")[0].strip()
            if part and part != "*":
                names.add(part)
    return names


def doc_texts() -> dict[str, str]:
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in DOCS}
    for mod in submodules():
        if mod.__doc__:
            texts[mod.__name__] = mod.__doc__
    return texts


def test_the_imports_parser() -> None:
    assert imported_names("from colloquy import Chat, tool\nx = 1") == {"Chat", "tool"}
    assert imported_names("from colloquy import (\n    Chat,\n    Usage as U,  # note\n)") == {
        "Chat", "Usage"}


def test_every_name_the_docs_import_is_exported() -> None:
    texts = doc_texts()
    assert any("from colloquy import" in t for t in texts.values()), "the docs show no import?"
    missing = {
        where: sorted(imported_names(text) - set(colloquy.__all__))
        for where, text in texts.items()
    }
    assert {k: v for k, v in missing.items() if v} == {}


def test_every_colloquy_class_the_docs_mention_is_exported() -> None:
    """A backticked CamelCase name in the docs (``RateLimitError``, ``FullHistory()``) that is a
    colloquy class must be importable from ``colloquy``."""
    defined: dict[str, str] = {}
    for mod in submodules():
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and getattr(obj, "__module__", "").startswith("colloquy"):
                defined.setdefault(name, obj.__module__)
    missing: dict[str, set[str]] = {}
    for path in DOCS:
        for name in re.findall(r"`([A-Z][A-Za-z0-9]+)(?:\([^`]*\))?`", path.read_text()):
            if name in defined and name not in colloquy.__all__:
                missing.setdefault(path.name, set()).add(f"{name} ({defined[name]})")
    assert missing == {}


def test_the_package_docstring_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = colloquy.__doc__ or ""
    example = doc.split("::", 1)[1]
    code = "\n".join(line[4:] for line in example.strip("\n").splitlines())
    monkeypatch.chdir(tmp_path)
    ns: dict[str, object] = {}
    exec(compile(code, "colloquy.__doc__", "exec"), ns)
    assert (tmp_path / "chat.db").exists()
    chat = ns["chat"]
    assert chat.history()[-1].message.text.endswith("last user text: 'hello'")  # type: ignore[attr-defined]
    chat.store.close()  # type: ignore[attr-defined]


# -- the types users meet are reachable --------------------------------------------------------------

def reachable() -> set[int]:
    """Ids of what ``colloquy`` exports, plus what each module that declares its own
    ``__all__`` (colloquy.models, colloquy.context, colloquy.store, ...) exports."""
    objs = {id(getattr(colloquy, n)) for n in colloquy.__all__}
    for mod in submodules():
        objs |= {id(getattr(mod, n)) for n in getattr(mod, "__all__", []) if hasattr(mod, n)}
    return objs


def _classes_in(hint: object) -> set[type]:
    out: set[type] = set()
    if inspect.isclass(hint):
        out.add(hint)
    for arg in typing.get_args(hint):
        out |= _classes_in(arg)
    return out


def test_types_in_public_signatures_can_be_imported() -> None:
    """Every colloquy class that a public method takes or returns, or a public field holds, is
    importable from ``colloquy`` or from a module that declares a public ``__all__``."""
    ok = reachable()
    unreachable: set[str] = set()
    for name in colloquy.__all__:
        obj = getattr(colloquy, name)
        targets: list[object] = [obj]
        if inspect.isclass(obj):
            targets += [m for n, m in vars(obj).items()
                        if (not n.startswith("_") or n == "__init__") and callable(m)]
        for target in targets:
            try:
                hints = typing.get_type_hints(target, include_extras=False)
            except Exception:  # noqa: BLE001 - not every object has resolvable hints
                continue
            for hint in hints.values():
                for cls in _classes_in(hint):
                    if cls.__module__.startswith("colloquy") and id(cls) not in ok:
                        unreachable.add(f"{cls.__module__}.{cls.__qualname__} (in {name})")
    assert unreachable == set()
