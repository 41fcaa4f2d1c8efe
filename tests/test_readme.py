"""The README's offline Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def offline_snippets() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [b for b in blocks if "ScriptedModel" in b or "MemoryStore()" in b]


def test_readme_has_offline_examples() -> None:
    assert offline_snippets(), "the README lost its offline example"


def test_readme_offline_examples_run() -> None:
    for snippet in offline_snippets():
        exec(compile(snippet, str(README), "exec"), {})
