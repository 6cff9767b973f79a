"""RAKE key phrases and SPO's degraded copies (unipo/data/keyphrases.py), by hand."""

from unipo.data.keyphrases import degraded_copies, key_phrases, without_phrases

ROSE = "Compatibility of systems of linear constraints over the set of natural numbers"
"""The opening of RAKE's worked example (Rose et al. 2010, Fig. 1.1)."""


def test_rake_scores_phrases_by_word_degree_over_frequency():
    # candidates at stop words: compatibility | systems | linear constraints | set | natural numbers; each word once,
    # so deg/freq is its phrase's length: 1, 1, 2 + 2, 1, 2 + 2 (ties by first occurrence)
    assert key_phrases(ROSE) == ["linear constraints", "natural numbers", "compatibility", "systems", "set"]
    # a repeated word: "sea" is in "blue sea" and "sea" (freq 2, deg 2 + 1 = 3: 1.5), "blue" scores 2/1, "calm" 1;
    # so "blue sea" = 3.5, "sea" = 1.5, "calm" = 1; punctuation ends a phrase
    assert key_phrases("Blue sea, calm. The sea!") == ["blue sea", "sea", "calm"]
    assert key_phrases("it is the") == [] and key_phrases("") == []


def test_removal_is_whole_words_any_case_every_occurrence():
    assert without_phrases("Red apples and red  Apples; redapples", ["red apples"]) == "and ; redapples"
    assert without_phrases("  keep   as is ", []) == "  keep   as is "


def test_copy_j_loses_its_j_best_phrases_up_to_how_many_there_are():
    copies, removed = degraded_copies(ROSE, 2)
    assert removed == [0, 1, 2]
    assert copies == [ROSE, "Compatibility of systems of over the set of natural numbers",
                      "Compatibility of systems of over the set of"]  # fmt: skip
    assert degraded_copies("7 7", 3) == (["7 7", "", "", ""], [0, 1, 1, 1])
