"""Notebook 03 as committed: tables rendered as Markdown, the live run opt-in at laptop, no claims on stale rows."""
from pathlib import Path

import nbformat

PATH = Path(__file__).resolve().parents[1] / "notebooks" / "03_cifar10_joint_training.ipynb"


def cells():
    return nbformat.read(PATH, as_version=4).cells


def code_with(text):
    return [c for c in cells() if c.cell_type == "code" and text in c.source]


def test_tables_are_rendered_as_markdown_not_printed():
    sources = "\n".join(c.source for c in cells() if c.cell_type == "code")
    for table in ("markdown_table(", "comparisons_table(", "memory_table(", "drop_goal_table(", "recipe_table(",
                  "accuracy_comparison_table("):
        assert f"display(Markdown({table}" in sources, table
        assert f"print({table}" not in sources, table
    (recipe,) = code_with("recipe_table(")
    assert [o.output_type for o in recipe.outputs] == ["display_data"]
    rendered = recipe.outputs[0].data
    assert "text/markdown" in rendered and "| `bits` | {8,6,4,2} |" in rendered["text/markdown"]


def test_the_live_run_is_opt_in_at_laptop_and_feeds_the_switchboard():
    (flag,) = code_with("run_live_training = settings")
    assert flag.source.startswith('run_live_training = settings["profile"] != "laptop"')
    (live,) = code_with("train_live(")
    assert "live_joint_trainer(**live_budget(settings[\"profile\"])" in live.source
    assert code_with("precision_switchboard(live_model")
    text = "\n".join(c.source for c in cells() if c.cell_type == "markdown")
    assert "run_live_training = True" in text and "about **2 minutes**" in text


def test_no_claims_on_stale_rows_and_no_developer_remarks():
    text = "\n".join(c.source for c in cells() if c.cell_type == "markdown")
    for phrase in ("are measured", "browser test", "No GPU", "known limitations", "colours the A.1 row",
                   "1.5× an FP32 pass"):
        assert phrase not in text, phrase
    assert "not resolved at this budget" in text and "95 % interval" in text
    # the A.1 rule says what the code does: activation scales at λ_b, the shared weight scale at λ, BN at λ
    assert r"a_b &\leftarrow a_b - \lambda_b\, U(\nabla_{a_b} L_b)" in text
    assert r"s_w &\leftarrow s_w - \lambda\, U\Big(\sum_b \eta_b \nabla_{s_w} L_b\Big)" in text
    assert r"\mathrm{BN}_b &\leftarrow \mathrm{BN}_b - \lambda\, U" in text
