"""The TOML writer: every value a spec holds reads back equal through tomllib."""

from __future__ import annotations

import math
import tomllib

import pytest

from irnn_search.search.toml_writer import dumps, value

TRICKY_STRINGS = ["plain", 'quote " and \\ backslash', "tab\tnew\nline\r", "café ✓", "del \x7f nul \x00 esc \x1b", ""]
FLOATS = [0.1, 1e-05, 1.2345678901234567e-300, 1e300, -2.5, -0.0, 3.0, float("inf"), float("-inf"), 5e-324]


def test_every_value_a_spec_holds_reads_back_equal() -> None:
    study = {
        "name": "adding-confirm",
        "tricky": TRICKY_STRINGS,
        "ints": [0, -7, 2**62],
        "floats": FLOATS,
        "flags": [True, False],
        "empty": [],
        "nested": [[1, 2], ["off", 1.5]],
        "task_options": {"T": 20, "val_size": 64, "odd key": "x", "a.b": [1, 2], "inner": {"deep": 1e-05}},
        "none_table": {},
    }
    models = {"family": "irnn", "lr": 0.0012345678901234567, "clip": "off", "hidden_size": 8}
    text = dumps({("study",): study, ("models", "irnn"): models, ("models", "lstm 2"): {"x": 1}}, header="a\nb")
    back = tomllib.loads(text)
    assert back == {"study": study, "models": {"irnn": models, "lstm 2": {"x": 1}}}
    for written, read in zip(FLOATS, back["study"]["floats"], strict=True):
        assert math.copysign(1, written) == math.copysign(1, read)  # -0.0 keeps its sign
    assert text.startswith("# a\n# b\n\n[study]\n")
    assert "lr = 0.0012345678901234567\n" in text and "1e-05" in text


def test_tuples_are_written_as_lists_and_nan_as_nan() -> None:
    back = tomllib.loads(f"x = {value((1, (2.5, 'a')))}\ny = {value(float('nan'))}")
    assert back["x"] == [1, [2.5, "a"]] and math.isnan(back["y"])


@pytest.mark.parametrize("bad", [None, object(), b"bytes", {1, 2}, "\ud800"])
def test_what_toml_cannot_hold_is_refused_not_written_wrong(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        value(bad)
