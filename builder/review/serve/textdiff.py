"""The text a generation should say beside what the ASR heard, differences marked.

Word-level (difflib over whitespace-split words, lower-cased for matching so that
case alone is no difference): the page shows the text with the words the
transcript lost or changed marked, and the transcript with the words it added or
changed marked. Segments are plain strings; the page renders them as text nodes,
never as HTML.
"""

from __future__ import annotations

import difflib


def word_diff(text: str | None, transcript: str | None) -> dict[str, list[list]]:
    """{"text": [[words, changed], ...], "transcript": [...]}: each side's words
    in order, grouped into runs that match the other side (False) or do not (True)."""
    a, b = (text or "").split(), (transcript or "").split()
    matcher = difflib.SequenceMatcher(None, [w.lower() for w in a], [w.lower() for w in b],
                                      autojunk=False)
    left: list[list] = []
    right: list[list] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        changed = op != "equal"
        _add(left, a[i1:i2], changed)
        _add(right, b[j1:j2], changed)
    return {"text": left, "transcript": right}


def _add(segments: list[list], words: list[str], changed: bool) -> None:
    if not words:
        return
    if segments and segments[-1][1] == changed:
        segments[-1][0] += " " + " ".join(words)
    else:
        segments.append([" ".join(words), changed])
