"""Notebook 06 as committed: the post-training answer is read from generated sentences, not typed numbers."""
import math
import re
from pathlib import Path

import nbformat
import pytest

from labkit.notebook_settings import notebook_settings

PATH = Path(__file__).resolve().parents[1] / "notebooks" / "06_deployment.ipynb"


def cells():
    return nbformat.read(PATH, as_version=4).cells


def _record(method, batch_norm, accuracy, images=400, fp32=90.0):
    return {"label": method, "method": method, "batch_norm": batch_norm, "images": images, "fp32": fp32,
            "accuracy": dict(zip((8, 2), accuracy))}


def test_post_training_findings_give_each_number_with_its_standard_error():
    from labkit.ptq import post_training_findings

    records = [_record("double_rounding", False, (89.0, 10.0)), _record("double_rounding", True, (90.0, 50.0)),
               _record("floor", True, (90.0, 52.0)), _record("jointly trained", False, (89.5, 80.0))]
    first, second = post_training_findings(records, chance=10.0).splitlines()
    # by hand: SE(90 %, 400) = 100·sqrt(.9·.1/400) = 1.5, SE(50 %, 400) = 2.5, SE(10 %, 400) = 1.5
    assert "FP32 model (90.0 % on the same 400 test images)" in first
    assert f"8-bit +0.0 ± {math.hypot(1.5, 1.5):.1f} (not resolved)" in first  # 0 < 2 · 2.12
    assert f"2-bit −40.0 ± {math.hypot(1.5, 2.5):.1f} (resolved)" in first  # 40 > 2 · 2.92
    assert "8-bit 89.0 ± 1.6 %" in second and "2-bit 10.0 ± 1.5 %" in second and "(chance: 10 %)" in second
    # without the variant that skips the batch norms there is no second sentence, and no chance without one given
    (only,) = post_training_findings(records[1:]).splitlines()
    assert only == first


def test_the_post_training_cell_prints_the_findings_and_the_text_types_no_measured_accuracy():
    sources = [c.source for c in cells()]
    (ptq,) = [i for i, s in enumerate(sources) if "post_training_comparison(" in s and "import" not in s]
    assert "post_training_findings(records" in sources[ptq] and "post_training_summary(records)" in sources[ptq]
    markdown = "\n".join(c.source for c in cells() if c.cell_type == "markdown")
    assert not re.search(r"\d+\.\d+ ?%", markdown), re.findall(r".{40}\d+\.\d+ ?%", markdown)
    for stale in ("48.6", "53.1", "75.5", "11.6", "27 points", "about 2 points below"):
        assert stale not in markdown, stale


def test_the_text_before_the_long_cell_states_the_laptop_sizes_and_their_standard_error():
    from labkit.ptq import standard_error

    laptop, smoke = notebook_settings("06", "laptop"), notebook_settings("06", "smoke")
    source = [c.source for c in cells()]
    (ptq,) = [i for i, s in enumerate(source) if "post_training_comparison(" in s and "import" not in s]
    before, after = (" ".join(source[i].split()) for i in (ptq - 1, ptq + 1))  # line breaks as spaces
    assert f"{laptop['eval_images']:,} at the laptop profile" in before
    assert f"on {laptop['ptq_images']:,} training images" in before and "minute" in before
    assert (f"±{standard_error(80.0, laptop['eval_images']):.1f} points at 80 % on the laptop profile's "
            f"{laptop['eval_images']:,} images") in after
    assert f"±{standard_error(80.0, smoke['eval_images']):.1f} points on the smoke profile's {smoke['eval_images']}" in after


def test_the_laptop_post_training_budget_fits_the_notebook_goal():
    laptop = notebook_settings("06", "laptop")
    # measured at one thread: 1,000 test and 512 calibration images take about 0.4 of the old 2,000 + 2,000
    assert laptop["eval_images"] <= 1000 and laptop["ptq_images"] <= 512
    assert laptop["ptq_images"] % 128 == 0  # whole calibration batches of 128 (labkit.ptq.calibrate)
    with pytest.raises(KeyError, match="no profile"):
        notebook_settings("06", "huge")
