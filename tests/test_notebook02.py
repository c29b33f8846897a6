"""Notebook 02 as committed: its ALRS accuracy comparison is printed with its interval, not typed."""
from pathlib import Path

import nbformat

PATH = Path(__file__).resolve().parents[1] / "notebooks" / "02_quantizers_and_gradients.ipynb"


def test_the_alrs_rows_come_with_their_paired_comparisons_and_the_text_types_no_seed_count():
    from labkit.reproduction import COMPARISONS

    cells = nbformat.read(PATH, as_version=4).cells
    (suite,) = [i for i, c in enumerate(cells) if c.cell_type == "code" and "collect()" in c.source]
    code = cells[suite].source
    assert "paired_comparisons(collect(), accuracy_by_seed())" in code and "comparison_sentence(c)" in code
    prefix = 'c["label"].startswith("ALRS − no ALRS")'
    assert prefix in code
    assert len([label for label, _, _ in COMPARISONS if label.startswith("ALRS − no ALRS")]) == 2  # both bit sets
    after = " ".join(cells[suite + 1].source.split())
    assert "95 % interval" in after and "not resolved at this budget" in after
    assert "one seed" not in after and "have not been checked" not in after


def _ratio_row(init, mode, grad, chain, clipped_high):
    return {"init": init, "grad_mode": mode, "grad": grad, "ratio": grad[2] / grad[8], "chain": chain,
            "ratio_per_tied_scale": grad[2] / grad[8] / chain, "clipped_high": clipped_high,
            "clipped_low": 0.1, "zero_codes_low": 0.5}


def test_ratio_findings_read_the_measured_rows_out():
    import pytest

    from labkit.errors import LabkitError
    from labkit.gradient_findings import ratio_findings

    rows = [_ratio_row("max", "lsq", {8: 1e-5, 6: 1e-4, 4: 1e-3, 2: 3.2e-2}, 64.0, 0.0),
            _ratio_row("reference", "lsq", {8: 4e-4, 6: 1e-4, 4: 1e-3, 2: 6.4e-3}, 64.0, 0.0025),
            _ratio_row("reference", "reference", {8: 3e-3, 6: 1e-3, 4: 2e-3, 2: 1e-3}, 1.0, 0.0025)]
    default, three_sigma, authors, largest = ratio_findings(rows, images=256).splitlines()
    # by hand: 3.2e-2 / 1e-5 = 3,200 = 64 × 50; 4e-4 / 1e-5 = 40; 6.4e-3 / 4e-4 = 16 = 64 × 0.25; 1e-3 / 3e-3
    assert "(one batch of 256 test images)" in default and "3,200.0× the 8-bit one" in default
    assert "2^Δ = 64" in default and "leaving 50.00× per tied scale" in default and "0.00 % of the weights" in default
    assert "0.25 % of the weights are clipped at 8 bits" in three_sigma and "40.0× the `max` init's" in three_sigma
    assert "ratio is 16.0× (0.25× per tied scale)" in three_sigma
    assert "gradient is 0.3× the 8-bit one" in authors
    assert "largest of the 4 precisions in 2 of the 3 set-ups" in largest  # the authors' row: 8-bit largest
    assert len(ratio_findings(rows[:1]).splitlines()) == 2  # set-ups not measured are left out
    with pytest.raises(LabkitError, match="max, lsq"):
        ratio_findings(rows[1:])


def test_the_ratio_table_is_read_out_by_generated_sentences_not_typed_claims():
    cells = nbformat.read(PATH, as_version=4).cells
    (ratios,) = [c for c in cells if c.cell_type == "code" and "scale_gradient_ratios(" in c.source]
    assert "ratio_findings(ratios" in ratios.source
    markdown = " ".join(" ".join(c.source.split()) for c in cells if c.cell_type == "markdown")
    for typed in ("the ratio is in the thousands", "tens of times larger", "near $10^{-3}$",
                  "thousands of times with the", "about as often as a coin toss would, but"):
        assert typed not in markdown, typed
