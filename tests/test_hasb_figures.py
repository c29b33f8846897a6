"""Notebook 04's spread figure (issue 13 item 6): SuperNets side by side at each average, every SubNet shown."""
import pytest

from labkit.hasb.figures import committed_search, spread_figure
from labkit.hasb.reviewers import accuracy_spread


def record(bits, accuracy):
    return {"allocation": {"a": bits[0], "b": bits[1]}, "avg_bits": sum(bits) / 2, "accuracy": accuracy}


HASB = [record((2, 4), 70.0), record((4, 2), 72.0), record((2, 4), 70.0), record((4, 4), 80.0), record((8, 0), 78.0)]
UNIFORM = [record((2, 4), 68.0), record((4, 2), 71.0), record((6, 2), 76.0)]


def test_each_supernet_has_its_own_slot_at_each_average():
    figure = spread_figure({"HASB": HASB, "uniform": UNIFORM})
    boxes = [t for t in figure.data if t.type == "box"]
    dots = [t for t in figure.data if t.type == "scatter"]
    assert [t.name for t in boxes] == ["HASB", "uniform"] and len(dots) == 2
    # averages 3.0 and 4.0 are categories 0 and 1; HASB left of centre, uniform right of it, never overlapping
    assert sorted(set(boxes[0].x)) == pytest.approx([-0.2, 0.8])
    assert sorted(set(boxes[1].x)) == pytest.approx([0.2, 1.2])
    for box, dot in zip(boxes, dots):
        for centre in set(box.x):
            near = [x for x in dot.x if abs(x - centre) < 0.2]
            assert near and all(abs(x - centre) <= 0.3 * 0.4 + 1e-12 for x in near)
    assert max(dots[0].x) < min(x for x in dots[1].x if x > 0.5)  # category 1: HASB dots all left of uniform's
    assert len(set(dots[0].x)) == len(dots[0].x)  # jittered: no two dots on one vertical
    # every SubNet once (the repeated allocation counted once), with its accuracy
    assert sorted(dots[0].y) == [70.0, 72.0, 78.0, 80.0] and sorted(boxes[1].y) == [68.0, 71.0, 76.0]
    assert boxes[0].marker.color != boxes[1].marker.color and dots[0].marker.color == boxes[0].marker.color
    assert list(figure.layout.xaxis.ticktext) == ["3.00", "4.00"] and list(figure.layout.xaxis.tickvals) == [0, 1]
    assert figure.layout.xaxis.title.text == "average bit-width of the SubNet"
    assert figure.layout.yaxis.title.text == "top-1 accuracy (%)"
    assert not dots[0].error_y.visible  # one evaluation per SubNet: no error bars


def test_seeds_give_error_bars():
    seeded = [record((2, 4), [70.0, 72.0]), record((4, 2), [60.0, 60.0, 63.0])]
    dots = [t for t in spread_figure({"HASB": seeded}).data if t.type == "scatter"][0]
    assert dots.error_y.visible
    assert sorted(dots.y) == pytest.approx([61.0, 71.0])
    assert sorted(dots.error_y.array) == pytest.approx([2 ** 0.5, 3 ** 0.5])  # sample standard deviations


def test_spread_rows_are_side_by_side_too():
    figure = spread_figure({"HASB": accuracy_spread(HASB), "uniform": accuracy_spread(UNIFORM)})
    assert [list(t.x) for t in figure.data] == [pytest.approx([-0.2, 0.8]), pytest.approx([0.2, 1.2])]
    assert list(figure.data[0].error_y.array) == [1.0, 1.0]  # max − mean at 3.0 (70, 72: 71) and 4.0 (80, 78: 79)
    assert list(figure.data[1].error_y.arrayminus) == [1.5, 0.0]  # mean − min: 3.0 (68, 71), 4.0 (76 alone)


def test_the_committed_comparison_is_two_boxes_apart():
    hasb, uniform = committed_search("hasb-seeds/hasb-s0"), committed_search("hasb-seeds/uniform-s0")
    figure = spread_figure({"HASB": hasb, "uniform": uniform})
    boxes = [t for t in figure.data if t.type == "box"]
    assert [sorted(set(b.x)) for b in boxes] == [pytest.approx([-0.2]), pytest.approx([0.2])]
    assert [len(b.y) for b in boxes] == [len(hasb), len(uniform)] and len(hasb) > 20
