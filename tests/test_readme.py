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


def test_no_install_command_names_the_pypi_package_colloquy() -> None:
    """attack7 F12: PyPI's ``colloquy`` is another project ("A package to faciliate
    conversations with LLMs", 0.1.0). ``pip install 'colloquy[server]'``, which the errors of
    ``colloquy serve`` and of the missing extras and parts of this README said, installs it in
    any environment without this checkout installed. The set-up installs from the checkout
    (``pip install -e .``), and so does every extra: ``pip install -e '.[server]'``."""
    root = README.parent
    files = [README, *(root / "src").rglob("*.py"), *(root / "bench").rglob("*.py"),
             *(root / "examples").rglob("*")]
    said = [f"{p.relative_to(root)}:{n}" for p in files if p.is_file()
            for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace")
                                     .splitlines(), 1)
            if re.search(r"pip install ['\"]?colloquy\b", line)]
    assert not said, said
