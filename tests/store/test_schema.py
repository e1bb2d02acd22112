"""The store schema: a layout made by ``make_layout`` is valid and round-trips through JSON; every rule of
``validate_layout`` refuses the layout that breaks it, naming the dataset."""

import pytest

from lisa_probe.store.schema import Field, layout_from_json, layout_to_json, make_layout, validate_layout

FACTORS = {"shape": {"kind": "categorical", "carried": True}, "rotation": {"kind": "continuous", "carried": False,
                                                                         "period": 1.0}}


def full_layout() -> dict:
    return make_layout({"mid": (8, 4, 4), "tokens": (16, 32)}, (3, 16, 16), FACTORS, residual_shapes={"mid": (8, 4, 4)},
                       decoded=True, decompose_sites=["mid"], prompts=True)


def test_a_made_layout_is_valid_and_round_trips_through_json():
    layout = full_layout()
    assert layout["meta/factors/shape"] == Field((), "int64", {"kind": "categorical", "carried": True})
    assert layout["meta/factors/rotation"].attrs["period"] == 1.0 and layout["meta/prompt"].is_string
    assert {"scores/decoded", "decompose/mid", "residuals/mid", "features/tokens"} <= set(layout)
    assert layout_from_json(layout_to_json(layout)) == layout


@pytest.mark.parametrize("change,message", [
    (lambda layout: layout.pop("scores/main"), "lacks required datasets ['scores/main']"),
    (lambda layout: [layout.pop(name) for name in ("features/mid", "features/tokens")], "['features/<site>']"),
    (lambda layout: layout.update({"scores/target": Field((3, 16), "float32")}), "must be (C, H, W)"),
    (lambda layout: layout.update({"scores/full": Field((3, 8, 8), "float32")}), "differs from scores/target's"),
    (lambda layout: layout.update({"meta/t": Field((), "float64")}), "meta/t: dtype float64 not allowed"),
    (lambda layout: layout.update({"meta/draw": Field((2,), "int32")}), "one scalar per row"),
    (lambda layout: layout.update({"meta/prompt": Field((), "float32")}), "meta/prompt must be a per-row string"),
    (lambda layout: layout.update({"meta/factors/t": Field((), "float32", {"kind": "continuous", "carried": True})}),
     "clashes with meta column 't'"),
    (lambda layout: layout.update({"meta/factors/size": Field((), "float32", {"kind": "ordinal", "carried": 1})}),
     "attrs need kind in"),
    (lambda layout: layout.update({"meta/factors/hue": Field((), "int64", {"kind": "categorical", "carried": True,
                                                                         "period": 1.0})}), "'period' must be"),
    (lambda layout: layout.update({"features/mid": Field((8, 4, 4), "int8")}), "features/mid: dtype int8"),
])
def test_each_rule_refuses_the_layout_that_breaks_it(change, message):
    layout = dict(full_layout())
    change(layout)
    with pytest.raises(ValueError, match=None) as error:
        validate_layout(layout)
    assert message in str(error.value)
