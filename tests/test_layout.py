"""The code's layout rules that a reviewer would otherwise check by eye: no source file over
800 lines (one module per concept; the project brief), vendored front-end libraries aside."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 800


def test_no_source_file_is_over_800_lines() -> None:
    files = [p for d in ("src", "tests", "bench", "scripts") if (ROOT / d).is_dir()
             for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".js", ".css", ".html")
             and "vendor" not in p.parts]
    assert len(files) > 50, "the layout test found no sources"
    long = {str(p.relative_to(ROOT)): n for p in files
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these by concept (over {MAX_LINES} lines): {long}"
