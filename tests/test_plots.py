"""The numbers behind each plot, hand-computed, and that every PNG is written and readable."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pytest_quantbench.report.plots import (
    axis_label,
    baseline_precision,
    colour_scale,
    error_bars,
    heatmap_panels,
    mean_accuracy,
    place_labels,
    recorded_baselines,
    relative_to_baseline,
    row_labels,
    write_plots,
)
from pytest_quantbench.results import Record

matplotlib = pytest.importorskip("matplotlib", reason="plots need the matplotlib extra")
matplotlib.use("Agg")


def summary() -> pd.DataFrame:
    """Two models on one CPU; m also measured compiled, where it has no fp32."""
    rows = [("m", "fp32", "eager", 500.0, 20.0, 4.0, 50.0, 25.0),
            ("m", "int8", "eager", 200.0, 10.0, 1.0, 50.0, None),
            ("m", "nf4", "eager", 125.0, 15.0, None, 41.7, 0.0),
            ("m", "bf16", "compiled", 250.0, 40.0, 2.0, 50.0, None),
            ("m", "nf4", "compiled", 125.0, 30.0, 3.0, 41.7, None),
            ("q", "fp32", "eager", 2000.0, 5.0, 0.5, 60.0, None),
            ("q", "nf4", "eager", 500.0, 6.0, 0.5, 55.0, None)]
    frame = pd.DataFrame(rows, columns=["model", "precision", "mode", "footprint_mb", "tokens_per_s",
                                        "tokens_per_s_iqr", "acc:simple", "acc:code"])
    return frame.assign(machine="AMD EPYC", device="cpu", peak_mem_mb=frame["footprint_mb"] + 300)


def test_axis_labels_carry_units_from_metrics():
    assert axis_label("footprint_mb") == "footprint (MB)"
    assert axis_label("tokens_per_s") == "tokens/s"
    assert axis_label("kl_mean") == "kl_mean (nats)"  # no report label: the name and its unit
    assert axis_label("acc:simple") == "simple acc (%)" and axis_label("ppl:wiki") == "wiki word ppl"


def test_row_labels_add_mode_and_model_only_where_they_differ():
    frame = summary()
    assert row_labels(frame)[:4] == ["fp32 eager", "int8 eager", "nf4 eager", "bf16 compiled"]
    eager = frame[frame["mode"] == "eager"]
    assert row_labels(eager) == ["fp32", "int8", "nf4", "fp32", "nf4"]
    assert row_labels(eager, with_model=True)[-1] == "q nf4"


def test_error_bars_are_half_the_iqr_either_side():
    bars = error_bars(summary(), "tokens_per_s")
    assert list(bars[:2]) == [2.0, 0.5] and math.isnan(bars[2])  # nf4 eager recorded no IQR
    assert error_bars(summary(), "footprint_mb") is None  # exact: no spread in METRICS
    assert error_bars(summary().drop(columns="tokens_per_s_iqr"), "tokens_per_s") is None


def test_baseline_rule_recorded_then_device_default_then_first():
    assert baseline_precision(["fp32", "int8", "nf4"], "cpu", recorded="int8") == "int8"
    assert baseline_precision(["fp32", "int8"], "cpu", recorded="bf16") == "fp32"  # recorded one not measured here
    assert baseline_precision(["fp16", "bf16", "fp32"], "cuda") == "bf16"
    assert baseline_precision(["bf16", "nf4"], "cpu") == "bf16"  # no fp32: the other default
    assert baseline_precision(["int8", "nf4"], "cuda") == "int8"
    assert baseline_precision(["fp32", "nf4"], None) == "fp32"


def test_recorded_baselines_read_vs_baseline_and_fidelity():
    def record(model, precision, details, device_name="AMD EPYC"):
        return Record(f"t[{model}-{precision}]", model, precision, "greedy", "cpu", task_details=details,
                      device_name=device_name)

    records = [record("m", "nf4", {"simple": {"n": 12, "vs_baseline": {"precision": "bf16", "drop_pt": 8.3}}}),
               record("m", "int8", {"fidelity": {"baseline": "bf16"}, "simple": {"n": 12}}),
               record("m", "fp4", {"simple": {"vs_baseline": {"precision": "fp32"}}}),
               record("q", "nf4", {"simple": {"n": 12}}),
               record("m", "nf4", {"fidelity": {"baseline": "fp16"}}, device_name="")]
    assert recorded_baselines(records) == {("AMD EPYC", "m"): "bf16", ("cpu", "m"): "fp16"}


def test_relative_change_is_signed_so_positive_is_better():
    frame = summary()
    eager = frame[(frame["model"] == "m") & (frame["mode"] == "eager")]
    change = relative_to_baseline(eager, ["footprint_mb", "tokens_per_s", "acc:simple", "acc:code"], "fp32")
    assert list(change["footprint_mb"]) == [0.0, 0.6, 0.75]  # 500 -> 200 MB is 60% smaller: +0.6
    assert list(change["tokens_per_s"]) == [0.0, -0.5, -0.25]
    assert change["acc:simple"].iloc[2] == pytest.approx((41.7 - 50) / 50)  # -0.166
    assert change["acc:code"].iloc[0] == 0 and math.isnan(change["acc:code"].iloc[1])
    assert change["acc:code"].iloc[2] == -1.0
    zero = relative_to_baseline(eager.assign(**{"acc:code": [0.0, 0.0, 10.0]}), ["acc:code"], "fp32")
    assert zero["acc:code"].isna().all()  # no relative change from a baseline of 0


def test_heatmap_panels_one_per_model_against_its_baselines():
    panels = heatmap_panels(summary(), ["footprint_mb", "tokens_per_s", "acc:simple", "acc:code"],
                            {("AMD EPYC", "q"): "nf4"})
    m, q = panels
    assert m.model == "m" and m.baselines == ["fp32", "bf16"]  # compiled has no fp32: bf16, the other default
    assert m.is_baseline == [True, False, False, True, False]
    assert list(m.changes["tokens_per_s"]) == [0.0, -0.5, -0.25, 0.0, -0.25]  # nf4 compiled: 30 vs bf16's 40
    assert list(m.changes["footprint_mb"])[3:] == [0.0, 0.5]
    assert q.baselines == ["nf4"] and q.is_baseline == [False, True]  # as recorded
    assert q.metrics == ["footprint_mb", "tokens_per_s", "acc:simple"]  # q has no code accuracy
    assert list(q.changes["footprint_mb"]) == [-3.0, 0.0] and list(q.values["tokens_per_s"]) == [5.0, 6.0]


def test_colour_scale_is_centred_on_the_baseline_and_symmetric():
    cmap, norm = colour_scale()
    assert norm(0.0) == 0.5 and norm(-0.5) == 0.0 and norm(0.5) == 1.0
    r, g, b, _ = cmap(norm(0.0))
    assert min(r, g, b) > 0.95  # the baseline's own value is near white
    better, worse = cmap(norm(0.3)), cmap(norm(-0.3))
    assert better[2] > better[0] and worse[0] > worse[2]  # blue better, red worse
    # 41.7% against 50% on 12 items (one item) is a sixth of the way down, a third of the scale: pale, not saturated
    assert norm((41.7 - 50) / 50) == pytest.approx(1 / 3, abs=0.01)


def test_mean_accuracy_over_the_tasks_every_point_has():
    means, tasks = mean_accuracy(summary())
    assert tasks == ["acc:simple"]  # code was run for fp32 and nf4 eager only
    assert list(means) == list(summary()["acc:simple"])
    disjoint = pd.DataFrame({"acc:a": [60.0, None], "acc:b": [None, 40.0], "acc:c": [50.0, None]})
    means, tasks = mean_accuracy(disjoint)
    assert tasks == [] and list(means) == [55.0, 40.0]  # nothing shared: each point's own tasks


def _overlap(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def test_labels_are_placed_apart_off_points_and_inside():
    anchors = [(100.0, 100.0), (104.0, 102.0), (100.0, 108.0), (300.0, 50.0)]  # three crowded, one alone
    sizes = [(40.0, 10.0), (60.0, 10.0), (30.0, 10.0), (20.0, 10.0)]
    bounds = (0.0, 0.0, 400.0, 300.0)
    offsets = place_labels(anchors, sizes, bounds, radius=5.0)
    boxes = [(x + dx, y + dy, x + dx + w, y + dy + h) for (x, y), (dx, dy), (w, h) in zip(anchors, offsets, sizes)]
    dots = [(x - 5, y - 5, x + 5, y + 5) for x, y in anchors]
    assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert not any(_overlap(box, dot) for box in boxes for dot in dots)
    assert all(bounds[0] <= b[0] and b[2] <= bounds[2] and bounds[1] <= b[1] and b[3] <= bounds[3] for b in boxes)
    assert offsets[3] == (6.0, -5.0)  # alone: just right of its point, centred on it


def test_labels_avoid_obstacles_and_stay_inside():
    right_of_point = (105.0, 90.0, 200.0, 110.0)  # covers the spots right, above right and centred above
    (dx, dy), = place_labels([(100.0, 100.0)], [(30.0, 10.0)], (0, 0, 400, 300), [right_of_point], radius=5.0)
    assert (dx, dy) == (-36.0, 6.0)  # the next one round: above, to the left (6 px clear of the point)
    (dx, dy), = place_labels([(395.0, 100.0)], [(30.0, 10.0)], (0, 0, 400, 300), radius=5.0)
    assert 395 + dx + 30 <= 400  # at the right edge: not to the right


def test_write_plots_writes_readable_pngs(tmp_path):
    from matplotlib.image import imread

    frame = summary()
    paths = write_plots(frame, tmp_path, {("AMD EPYC", "q"): "nf4"})
    assert [p.name for p in paths] == ["footprint_mb.png", "tokens_per_s.png", "peak_mem_mb.png", "heatmap.png",
                                       "accuracy_vs_memory.png"]
    for path in paths:
        height, width, _ = imread(path).shape
        assert height > 300 and width > 400
    # the heatmap has a panel per model: taller than a one-model one
    one = write_plots(frame[frame["model"] == "q"], tmp_path / "one")
    assert imread(paths[3]).shape[0] > imread(one[3]).shape[0]


def test_write_plots_leaves_out_what_it_cannot_draw(tmp_path):
    single = summary().iloc[[0]].drop(columns=["acc:simple", "acc:code"])
    assert [p.name for p in write_plots(single, tmp_path)] == ["footprint_mb.png", "tokens_per_s.png",
                                                               "peak_mem_mb.png"]
    assert write_plots(summary().iloc[0:0], tmp_path) == []
