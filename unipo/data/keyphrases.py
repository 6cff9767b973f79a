"""Key phrases of a text (RAKE) and copies of a response with its k best key phrases removed: the self-supervised
labels of `spo_aux_recon` (SPO, Li et al. 2024, arXiv:2409.17791, which a review says finds key content with RAKE).

RAKE (Rose, Engel, Cramer and Cowley 2010, "Automatic Keyword Extraction from Individual Documents", in Text Mining:
Applications and Theory): the text is cut into candidate phrases at stop words and punctuation; a word scores
deg(w)/freq(w), where freq(w) counts its occurrences in candidates and deg(w) sums the word counts of the candidates
it occurs in; a phrase scores the sum of its words' scores. The stop list here is a short English one (the paper's is
Fox's 1989 list): ours.
"""

from __future__ import annotations

import re

STOP_WORDS = frozenset(
    "a about above after again against all am an and any are as at be because been before being below between both "
    "but by can could did do does doing down during each few for from further had has have having he her here hers "
    "him his how i if in into is it its itself just me more most my no nor not of off on once only or other our ours "
    "out over own same she should so some such than that the their them then there these they this those through to "
    "too under until up very was we were what when where which while who whom why will with would you your".split()
)
"""Words that end a candidate phrase (lower case)."""
_DELIMITER = re.compile(r"[^\w\s'-]+")
"""Punctuation that ends a candidate phrase."""


def key_phrases(text: str) -> list[str]:
    """RAKE's candidate phrases of `text` (lower-cased words joined by single spaces), best first: by score, then by
    first occurrence; each phrase once."""
    candidates = []
    for chunk in _DELIMITER.split(text.lower()):
        phrase: list[str] = []
        for word in re.findall(r"[\w'-]+", chunk) + [""]:  # "" closes the chunk's last phrase
            if word and word not in STOP_WORDS:
                phrase.append(word)
            elif phrase:
                candidates.append(phrase)
                phrase = []
    freq: dict[str, int] = {}
    degree: dict[str, int] = {}
    for phrase in candidates:
        for word in phrase:
            freq[word] = freq.get(word, 0) + 1
            degree[word] = degree.get(word, 0) + len(phrase)
    scores: dict[str, float] = {}
    for phrase in candidates:
        scores.setdefault(" ".join(phrase), sum(degree[w] / freq[w] for w in phrase))
    return sorted(scores, key=lambda p: -scores[p])  # stable: ties stay in order of first occurrence


def without_phrases(text: str, phrases: list[str]) -> str:
    """`text` with every occurrence of each phrase removed (case-insensitive, whole words, any spacing between the
    words), then runs of spaces collapsed and the ends stripped; `text` itself when there is nothing to remove."""
    if not phrases:
        return text
    for phrase in phrases:
        words = r"\s+".join(re.escape(w) for w in phrase.split())
        text = re.sub(rf"(?<![\w'-]){words}(?![\w'-])", "", text, flags=re.IGNORECASE)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def degraded_copies(text: str, max_removed: int) -> tuple[list[str], list[int]]:
    """SPO's self-supervised examples of one response (our reconstruction): copy j = 0..`max_removed` is `text`
    without its min(j, P) best key phrases (P = how many it has); returns (the copies, how many phrases each lost)."""
    phrases = key_phrases(text)
    removed = [min(j, len(phrases)) for j in range(max_removed + 1)]
    return [without_phrases(text, phrases[:k]) for k in removed], removed
