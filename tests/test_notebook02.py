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
