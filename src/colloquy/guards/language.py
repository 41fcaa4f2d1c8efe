"""Is a message English? The example-based topic guard needs to know, because the embedding model
it scores with (all-MiniLM-L6-v2) was trained on English text: on other languages its scores mean
little, so such messages go to the model judge or are allowed with a note, as configured.

Two checks, cheapest first:

* the script: a message whose letters are mostly outside the Latin alphabet (Cyrillic, Greek,
  Arabic, CJK, ...) is not English;
* for Latin-script text, py3langid (a maintained fork of langid.py, Lui & Baldwin 2012, BSD
  licence; a naive Bayes model over byte n-grams, no network, ~2 ms a message), restricted to
  Latin-script languages: not English only when it names another language with normalised
  probability >= ``min_confidence`` (default 0.8, see :data:`LATIN_LANGUAGES`). Short English messages often get a low-confidence guess of another language ("ok",
  "and for dessert?"), so a low-confidence guess counts as English: a false "not English" would
  send an English message past the classifier.

py3langid is part of ``colloquy[embeddings]``; without it only the script check runs.
"""

from __future__ import annotations

import threading
import unicodedata
from typing import Any

#: Below this normalised probability a non-English guess is ignored (see the module docstring).
MIN_CONFIDENCE = 0.8
#: The Latin-script languages py3langid chooses among (with English): restricting the set keeps
#: its probabilities for them confident. Measured on CLINC150's val and oos_val (3,100 English
#: queries): none flagged as another language at 0.8; 13 of 14 short Spanish, French, German,
#: Italian, Portuguese and Dutch requests written for the check were caught.
LATIN_LANGUAGES = ("en", "es", "fr", "de", "it", "pt", "nl", "pl", "sv", "tr", "id", "ro", "cs",
                   "da", "no", "fi", "hu", "ca", "vi", "hr", "sk", "sl", "lt", "lv", "et", "ms")

_IDENTIFIER: Any = None
_LOADED = threading.Event()
_STARTED = threading.Lock()
_started = False


def _load() -> None:
    global _IDENTIFIER
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        ident.set_languages([lang for lang in LATIN_LANGUAGES if lang in ident.nb_classes])
        _IDENTIFIER = ident
    except Exception:  # noqa: BLE001 - not installed or broken: the script check still runs
        _IDENTIFIER = None
    finally:
        _LOADED.set()


def preload() -> None:
    """Start loading py3langid's model in a background thread (it takes 1-25 s depending on the
    machine's load: it is decompressed from an .xz file), so a guard's first check is not held."""
    global _started
    with _STARTED:
        if not _started:
            _started = True
            threading.Thread(target=_load, name="language-model", daemon=True).start()


def _identifier(wait: bool = True) -> Any:
    """py3langid's identifier with normalised probabilities, or None if missing (or, with
    ``wait=False``, still loading)."""
    preload()
    if wait:
        _LOADED.wait()
    return _IDENTIFIER if _LOADED.is_set() else None


def latin_share(text: str) -> float:
    """The share of the letters of ``text`` that are Latin (1.0 when it has no letters)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 1.0
    latin = sum(1 for c in letters if "LATIN" in unicodedata.name(c, ""))
    return latin / len(letters)


def detect_language(text: str, *, min_confidence: float = MIN_CONFIDENCE,
                    wait: bool = True) -> tuple[str, float]:
    """``(language, confidence)``: an ISO 639-1 code ("en" when English or unsure, "und" for
    an unidentified non-Latin script) and the detector's normalised probability (1.0 for a script
    decision, 0.0 for "unsure, so English"). ``wait=False`` does not wait for the detector's
    model to load: until it has, only the script check runs.
    """
    if latin_share(text) < 0.5:
        return "und", 1.0  # not Latin script: not English, whatever it is
    ident = _identifier(wait)
    if ident is None:
        return "en", 0.0
    lang, prob = ident.classify(text)
    if lang != "en" and prob >= min_confidence:
        return str(lang), float(prob)
    return "en", float(prob) if lang == "en" else 0.0


def is_english(text: str, *, min_confidence: float = MIN_CONFIDENCE) -> bool:
    """False only when ``text`` is confidently another language (see :func:`detect_language`)."""
    return detect_language(text, min_confidence=min_confidence)[0] == "en"
