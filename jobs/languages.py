"""Which writing system a text is in, and whether a model that reads some languages can read
it. A model trained on English turns Chinese into vectors and scores that look real and mean
nothing ("我要杀了你" not flagged); its answer says so instead (``Output.warnings``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

# the scripts each language is written in (ISO 639-1); a language not listed reads Latin
SCRIPTS_OF = {
    "zh": {"Han"}, "ja": {"Han", "Kana"}, "ko": {"Hangul", "Han"}, "ru": {"Cyrillic"}, "uk": {"Cyrillic"},
    "bg": {"Cyrillic"}, "ar": {"Arabic"}, "fa": {"Arabic"}, "he": {"Hebrew"}, "hi": {"Devanagari"},
    "th": {"Thai"}, "el": {"Greek"},
}  # fmt: skip
LANGUAGES_OF = {"Han": "zh, ja", "Kana": "ja", "Hangul": "ko", "Cyrillic": "ru", "Arabic": "ar", "Latin": "en"}
RANGES = (  # (first, last code point, script); enough to tell the scripts above apart
    (0x0041, 0x024F, "Latin"), (0x0370, 0x03FF, "Greek"), (0x0400, 0x04FF, "Cyrillic"), (0x0590, 0x05FF, "Hebrew"),
    (0x0600, 0x06FF, "Arabic"), (0x0900, 0x097F, "Devanagari"), (0x0E00, 0x0E7F, "Thai"), (0x1100, 0x11FF, "Hangul"),
    (0x3040, 0x30FF, "Kana"), (0x3400, 0x4DBF, "Han"), (0x4E00, 0x9FFF, "Han"), (0xAC00, 0xD7AF, "Hangul"),
    (0xF900, 0xFAFF, "Han"), (0x20000, 0x2FA1F, "Han"),
)  # fmt: skip
UNREAD_SHARE = 0.3  # warn when this share of a text's letters is in scripts the model does not read


def script_of(char: str) -> str | None:
    point = ord(char)
    for first, last, script in RANGES:
        if first <= point <= last:
            return script if script != "Latin" or char.isalpha() else None
    return None


def unread(texts: Iterable[str], *, languages: list[str], model: str) -> str | None:
    """A warning when the texts are largely in scripts that ``languages`` are not written in."""
    readable = set().union(*(SCRIPTS_OF.get(lang, {"Latin"}) for lang in languages))
    counts = Counter(s for text in texts for s in map(script_of, text) if s is not None)
    letters = sum(counts.values())
    foreign = {script: n for script, n in counts.items() if script not in readable}
    if not letters or sum(foreign.values()) < UNREAD_SHARE * letters:
        return None
    main = max(foreign, key=foreign.__getitem__)
    share = round(100 * sum(foreign.values()) / letters)
    return (
        f"{model} reads {', '.join(languages)}; {share}% of this input is in {main} script "
        f"({LANGUAGES_OF.get(main, main)}): this result means little for it; a multilingual model serves it "
        "(the production profile names one)"
    )
