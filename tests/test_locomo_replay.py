"""bench/memory.py's LoCoMo replay is faithful (issue 13, item 5): consecutive turns of one
speaker merge into one message only within a session, so every message carries the date of the
session it was said in (merged across a session boundary, a turn carried a date days before it
was said, and the date index placed "yesterday" on the wrong day). The figures themselves come
from running the bench, never from a test."""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "bench" / "memory.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def day(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d")


def test_turns_of_one_speaker_merge_within_a_session_never_across(bench: ModuleType, tmp_path: Path) -> None:
    conv = {
        "speaker_a": "Ana", "speaker_b": "Ben",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [
            {"speaker": "Ana", "dia_id": "D1:1", "text": "I started painting."},
            {"speaker": "Ben", "dia_id": "D1:2", "text": "Nice!"},
            {"speaker": "Ben", "dia_id": "D1:3", "text": "What do you paint?"},
            {"speaker": "Ana", "dia_id": "D1:4", "text": "Lakes, mostly."},
        ],
        # Ana ends session 1 and opens session 2, twelve days later.
        "session_2_date_time": "10:37 am on 20 May, 2023",
        "session_2": [
            {"speaker": "Ana", "dia_id": "D2:1", "text": "I went to a support group yesterday."},
            {"speaker": "Ben", "dia_id": "D2:2", "text": "How was it?", "blip_caption": "a mug"},
        ],
    }
    qa = [{"question": "When did Ana go to the support group?", "answer": "19 May 2023",
           "evidence": ["D2:1"], "category": 2},
          {"question": "Unanswerable", "evidence": ["D9:9"], "category": 5}]
    path = tmp_path / "conv-x.json"
    path.write_text(json.dumps({"conversation": conv, "qa": qa}))

    loaded = bench.load(path)

    # Within session 1, Ben's two turns are one message; Ana's last turn of session 1 and her
    # first of session 2 stay two messages, each dated by its own session.
    assert [(m.role, m.meta["dia_ids"]) for m in loaded.messages] == [
        ("user", ["D1:1"]), ("assistant", ["D1:2", "D1:3"]), ("user", ["D1:4"]),
        ("user", ["D2:1"]), ("assistant", ["D2:2"])]
    assert loaded.messages[1].message.text == "Nice!\nWhat do you paint?"
    assert [day(m.created_at) for m in loaded.messages] == [
        "2023-05-08", "2023-05-08", "2023-05-08", "2023-05-20", "2023-05-20"]
    assert [m.seq for m in loaded.messages] == [1, 2, 3, 4, 5]
    assert loaded.messages[-1].message.text.endswith("[shares a photo: a mug]")
    # The question's evidence is the session-2 message, dated the 20th (so "yesterday" is the
    # 19th); a question whose evidence is not in the log is left out.
    assert loaded.seq_of["D2:1"] == 4
    assert [(q.category, q.evidence) for q in loaded.questions] == [(2, ["D2:1"])]
    # The replay builds a request at each assistant turn, after the messages before it.
    assert bench.requests_of(loaded) == [1, 4]


def test_an_unknown_policy_name_is_refused(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    # A retired or misspelt name ("default-hybrid" is now "default" with the extra) measured
    # nothing, without a word.
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--policies", "default,no-such-policy", "--sections", "table", "--quick",
                    "--no-dense"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown policies no-such-policy" in err and "default-cold" in err
