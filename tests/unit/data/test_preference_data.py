"""Preference data: list rows validated by row number, lists binarised to (best, worst) pairs."""

import pytest

from unipo.config import ConfigError
from unipo.data.preference import is_listwise, lists_to_pairs, validate_pairs


def test_list_rows_are_validated_with_row_numbers():
    rows = [
        {"prompt": "p", "responses": ["a", "b", "c"], "scores": [1, 3, 0]},
        {"prompt": "q", "responses": ["a", "b"], "scores": [1, 2]},
        {"prompt": "r", "responses": ["a", "b", "c"], "scores": [2, 2, 2]},
        {"prompt": "s", "responses": ["a", "", "c"], "scores": [1, 2, 3]},
        {"prompt": "t", "responses": ["a", "b", "c"], "scores": [1, "x", 3]},
        {"prompt": "u", "responses": ["a", "b", "c"]},
        {"prompt": "v", "responses": ["a", "b", "c"], "scores": [1, float("nan"), 3]},
        {"prompt": "w", "responses": ["a", "b", "a"], "scores": [1, 2, 3]},
    ]
    assert is_listwise(rows)
    with pytest.raises(ConfigError) as e:
        validate_pairs(rows, 0.5)
    msg = str(e.value)
    assert "7 of 8 rows are bad" in msg and "row 2: 2 responses; every list needs 3" in msg
    assert "row 3: all scores are equal" in msg and "row 4: empty response" in msg
    assert "row 5: scores must be finite numbers" in msg and "row 6: missing scores" in msg
    assert "row 7: scores must be finite numbers" in msg
    assert "row 8: the best and the worst response are the same text" in msg
    assert validate_pairs(rows, 1.0) == rows[:1]


def test_lists_become_best_worst_pairs_with_their_scores():
    rows = [{"prompt": "p", "responses": ["a", "b", "c", "d"], "scores": [1, 3, 0, 3], "id": 7}]
    assert lists_to_pairs(rows) == [
        {"prompt": "p", "id": 7, "chosen": "b", "rejected": "c", "score_chosen": 3, "score_rejected": 0}
    ]


def test_unpaired_rows_are_validated_with_row_numbers():
    from unipo.data.preference import is_unpaired

    rows = [
        {"prompt": "p", "completion": "a", "label": True},
        {"prompt": "q", "completion": " ", "label": False},
        {"prompt": "r", "completion": "b", "label": "yes"},
        {"prompt": "s", "completion": "c"},
    ]
    assert is_unpaired(rows)
    with pytest.raises(ConfigError) as e:
        validate_pairs(rows, 0.5)
    msg = str(e.value)
    assert "row 2: empty completion" in msg and "row 3: label must be true or false, got 'yes'" in msg
    assert "row 4: missing label" in msg


def test_single_trajectories_are_validated_and_become_lists_of_one():
    from unipo.data.preference import is_single, is_unpaired, singles_to_lists

    rows = [
        {"prompt": "p", "completion": "a", "score": 0.5, "id": 1},
        {"prompt": "q", "completion": "", "score": 1},
        {"prompt": "r", "completion": "b", "score": float("inf")},
        {"prompt": "s", "completion": "c", "score": True},
        {"prompt": "t", "completion": "d"},
        {"prompt": "u", "completion": "e", "score": -2},
    ]
    assert is_single(rows) and not is_unpaired(rows) and not is_listwise(rows)
    with pytest.raises(ConfigError) as e:
        validate_pairs(rows, 0.5)
    msg = str(e.value)
    assert "4 of 6 rows are bad" in msg and "row 2: missing completion" in msg
    assert "row 3: score must be finite numbers" in msg and "row 4: score must be finite numbers" in msg
    assert "row 5: missing score" in msg
    good = validate_pairs(rows, 1.0)
    assert good == [rows[0], rows[5]]
    assert singles_to_lists(good) == [
        {"prompt": "p", "id": 1, "responses": ["a"], "scores": [0.5]},
        {"prompt": "u", "responses": ["e"], "scores": [-2]},
    ]


def test_lists_of_trajectories_may_have_one_response_and_equal_scores():
    rows = [{"prompt": "p", "responses": ["a"], "scores": [1]}, {"prompt": "q", "responses": ["b"], "scores": [1]}]
    with pytest.raises(ConfigError, match="row 1: 1 responses; every list needs at least 2"):
        validate_pairs(rows, 0.0)
    assert validate_pairs(rows, 0.0, trajectories=True) == rows
    pairs = [
        {"prompt": "p", "responses": ["a", "a"], "scores": [2, 2]},
        {"prompt": "q", "responses": ["b"], "scores": [1]},
    ]
    with pytest.raises(ConfigError, match="row 2: 1 responses; every list needs 2"):
        validate_pairs(pairs, 0.0, trajectories=True)  # one width per dataset, equal texts and scores are fine


def test_a_preference_file_reports_bad_lines_by_file_and_line(tmp_path):
    from unipo.data.preference import load_pairs

    path = tmp_path / "p.jsonl"
    pair = '{"prompt": "p", "chosen": "a", "rejected": "b"}'
    path.write_text("\n".join([pair, "{oops", '{"prompt": "p", "chosen": "a", "rejected": "a"}', pair]) + "\n")
    found = load_pairs(str(path))
    assert found.where == [f"{path}:1", f"{path}:3", f"{path}:4"] and found.bad[0].startswith(f"{path}:2: not valid")
    with pytest.raises(ConfigError) as e:
        validate_pairs(found.rows, 0.25, found.where, found.bad)
    assert "2 of 4 rows are bad" in str(e.value) and f"{path}:3: chosen == rejected" in str(e.value)
    assert len(validate_pairs(found.rows, 0.5, found.where, found.bad)) == 2


def test_rows_are_selected_by_their_score_margin():
    from unipo.config import DataConfig
    from unipo.data.sources import select_by_margin

    rows = [
        {"score_chosen": 3, "score_rejected": 1},
        {"scores": [0.5, 0, 1.5]},
        {"score_chosen": 1, "score_rejected": 0.5},
    ]
    assert select_by_margin(rows, DataConfig(), "k") == rows  # margins 2, 1.5 and 0.5; no bound: every row
    assert select_by_margin(rows, DataConfig(margin_at_least=1.5), "k") == rows[:2]  # MPO's easy pairs
    assert select_by_margin(rows, DataConfig(margin_below=1.5), "k") == rows[2:]  # and its hard ones
    with pytest.raises(ConfigError, match="data.path: .* in every row; row 4 has none"):
        select_by_margin([*rows, {"score_chosen": "x", "score_rejected": 0}], DataConfig(margin_below=1), "data.path")
    with pytest.raises(ConfigError, match=r"k: no row has a score margin in \[5.0, None\)"):
        select_by_margin(rows, DataConfig(margin_at_least=5), "k")


def test_a_staged_config_needs_stages_and_only_it_takes_them():
    from unipo import config

    with pytest.raises(ConfigError, match="stages: `trainer: staged` needs stages"):
        config.load("grpo", extra={"trainer": "staged"})
    with pytest.raises(ConfigError, match="stages: `trainer: staged` needs stages, and no other trainer takes them"):
        config.load("grpo", extra={"stages": [{"name": "a", "recipe": "dpo"}]})
    with pytest.raises(ConfigError, match="stages.0.name"):
        config.load("mpo_mixed", extra={"stages": [{"name": "a b", "recipe": "dpo"}]})
