"""Notebook 05 and the modules behind it: per-bit accuracy decoded once, its table and figure, the recipe / class
tables, the live EfficientNet-Lite0 fine-tune, and the committed notebook (text for students, tables as tables).

References: :func:`labkit.evaluate.accuracy_per_bits` and a per-image argmax loop for the accuracies, a
``__getitem__`` counter for the decoding, ``collections.Counter`` for the class counts, the recipe's own
``TrainConfig`` for the recipe table and the live run's settings, and the trainer's own epoch row for its result.
"""
from __future__ import annotations

import collections
import re
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import labkit
from labkit.bit_accuracy import accuracy_figure, accuracy_table, load_images, measure
from labkit.convert import get_bits, set_bits
from labkit.errors import LabkitError
from labkit.evaluate import FP32, accuracy_per_bits, fixed_subset
from labkit.imagenet_tables import (checkpoint_sentence, class_table, recipe_table, recorded_accuracy_rows,
                                    sentence_for_profile)
from labkit.notebook_settings import notebook_settings
from labkit.train.recipes import recipe_config

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "05_imagenet_joint_training.ipynb"
CHECK_TAG = "nbval-check-output"


# ------------------------------------------------------------------------------------------ helpers


class CountingImages(Dataset):
    """Random 3×8×8 images with labels in 0..9; counts how often each sample is read (decoded)."""

    def __init__(self, n: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 8, 8, generator=generator)
        self.labels = torch.randint(0, 10, (n,), generator=generator)
        self.reads = 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        self.reads += 1
        return self.images[index], int(self.labels[index])


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


def tiny_models():
    torch.manual_seed(0)
    fp32 = TinyNet().eval()
    quantized = labkit.quantize_model(fp32, (8, 4, 2), example_input=torch.randn(2, 3, 8, 8)).eval()
    return quantized, fp32


@torch.no_grad()
def per_image_top1(model, dataset) -> float:
    """Brute force: one image at a time, argmax over all classes."""
    model.eval()
    hits = sum(int(model(dataset[i][0][None]).argmax(1)) == dataset[i][1] for i in range(len(dataset)))
    return round(100.0 * hits / len(dataset), 4)


def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def table_cells(markdown: str) -> list[list[str]]:
    """The body rows of the first Markdown table in ``markdown``, as stripped cell texts."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


# ------------------------------------------------------------------------------------------ labkit.bit_accuracy


def test_measure_matches_accuracy_per_bits_and_a_per_image_loop():
    model, fp32 = tiny_models()
    sets = {"first": CountingImages(37, seed=1), "second": CountingImages(23, seed=2)}
    rows = measure(model, fp32, sets, {"first": 30, "second": None}, (8, 4, 2), batch_size=8, progress=False)
    assert [(r["set"], r["images"]) for r in rows] == [("first", 30), ("second", 23)]
    for row, (name, dataset) in zip(rows, sets.items()):
        subset = fixed_subset(dataset, 30 if name == "first" else None)
        reference = accuracy_per_bits(model, subset, (8, 4, 2))
        assert {b: row["accuracy"][b] for b in (8, 4, 2)} == reference
        assert row["accuracy"][FP32] == accuracy_per_bits(fp32, subset, [FP32])[FP32] == per_image_top1(fp32, subset)
        for b in (8, 4, 2):
            set_bits(model, b)
            assert row["accuracy"][b] == per_image_top1(model, subset)
    assert len({tuple(r["accuracy"].values()) for r in rows}) == 2  # the sets differ: not one number reused


def test_measure_decodes_each_image_once_where_per_precision_evaluation_decodes_it_per_precision():
    model, fp32 = tiny_models()
    dataset = CountingImages(20)
    measure(model, fp32, {"set": dataset}, {"set": None}, (8, 4, 2), batch_size=6, progress=False)
    assert dataset.reads == 20
    assert set(get_bits(model).values()) == {2}  # left at the last bit-width, as the docstring says
    dataset.reads = 0
    accuracy_per_bits(model, dataset, (8, 4, 2))
    accuracy_per_bits(fp32, dataset, [FP32])
    assert dataset.reads == 4 * 20  # the old way: one decode per precision


def test_load_images_keeps_every_image_and_label_in_order():
    dataset = CountingImages(11)
    images = load_images(dataset, batch_size=4)
    assert torch.equal(images.tensors[0], dataset.images) and torch.equal(images.tensors[1], dataset.labels)


def test_measure_without_fp32_and_bad_sizes():
    model, _ = tiny_models()
    rows = measure(model, None, {"set": CountingImages(8)}, {"set": None}, (8,), progress=False)
    assert list(rows[0]["accuracy"]) == [8]
    with pytest.raises(LabkitError, match="no size"):
        measure(model, None, {"set": CountingImages(8)}, {}, (8,), progress=False)


def test_accuracy_table_holds_the_measured_numbers():
    rows = [{"set": "imagenette-val", "images": 200, "accuracy": {32: 74.5, 8: 95.25, 6: 90.0, 4: 10.0, 2: 0.0}},
            {"set": "imagenet-val-sample", "images": 1300, "accuracy": {32: 81.0, 8: 79.0, 6: 68.0, 4: 2.0, 2: 0.25}}]
    text = accuracy_table(rows)
    header = text.splitlines()[0]
    assert [h.strip() for h in header.strip("|").split("|")] == [
        "evaluation set", "images", "FP32 top-1 (%)", "8-bit top-1 (%)", "6-bit top-1 (%)", "4-bit top-1 (%)",
        "2-bit top-1 (%)"]
    body = table_cells(text)
    assert body[0] == ["`imagenette-val`", "200", "74.5", "95.2", "90.0", "10.0", "0.0"]
    assert body[1] == ["`imagenet-val-sample`", "1,300", "81.0", "79.0", "68.0", "2.0", "0.2"]


def test_figure_names_evaluation_sets_and_labels_every_bar_so_zero_bars_are_read():
    rows = [{"set": "imagenette-val", "images": 200, "accuracy": {32: 74.5, 8: 95.0, 6: 90.0, 4: 10.0, 2: 0.0}},
            {"set": "imagenet-val-sample", "images": 200, "accuracy": {32: 81.0, 8: 79.0, 6: 68.0, 4: 2.0, 2: 0.2}}]
    figure = accuracy_figure(rows, title="t")
    assert figure.layout.legend.title.text == "evaluation set"
    assert [bar.name for bar in figure.data] == ["imagenette-val (200 images)", "imagenet-val-sample (200 images)"]
    for bar, row in zip(figure.data, rows):
        assert list(bar.x) == ["FP32", "8-bit", "6-bit", "4-bit", "2-bit"]
        assert list(bar.y) == [row["accuracy"][b] for b in (32, 8, 6, 4, 2)]
        assert list(bar.text) == [f"{row['accuracy'][b]:.1f} %" for b in (32, 8, 6, 4, 2)]
        assert bar.textposition == "outside" and bar.cliponaxis is False
    assert figure.data[0].text[-1] == "0.0 %"  # the 2-bit bar of height 0 still shows its value
    assert figure.data[0].marker.color != figure.data[1].marker.color
    assert figure.layout.yaxis.range[1] > 100  # room for the labels above a 100 % bar
    assert figure.layout.shapes[0].y0 == 0.1  # chance among 1000 classes, labelled outside the bars' area
    assert figure.layout.annotations[0].xref == "paper" and figure.layout.annotations[0].x >= 1.0


# ------------------------------------------------------------------------------------------ labkit.imagenet_tables


def test_recipe_table_reads_the_recipes():
    names = ("imagenet-resnet18", "imagenet-mobilenetv2")
    body = table_cells(recipe_table(names, profile="paper"))
    for row, name in zip(body, names):
        config = recipe_config(name, profile="paper")
        assert row[0] == f"`{name}`" and row[1] == f"`{config.model}`"
        assert row[2] == "{" + ",".join(map(str, config.bits)) + "}"
        optimizer, lr, wd = re.fullmatch(r"(\w+), lr (\S+), wd (\S+)", row[3]).groups()
        assert optimizer.lower() == config.optimizer and float(lr) == config.lr and float(wd) == config.weight_decay
        assert int(row[4]) == config.epochs and int(row[5]) == config.batch_size
        assert row[6] == "Alg. A.2" and row[7] == config.alrs


def test_class_table_counts_by_class():
    class Index:
        wnids = [f"n{i:08d}" for i in range(1000)]
        names = [f"class {i}" for i in range(1000)]

    targets = [571, 0, 0, 217, 571, 571]
    body = table_cells(class_table(targets, Index()))
    assert [int(row[1]) for row in body] == sorted(collections.Counter(targets))
    assert {int(row[1]): int(row[3]) for row in body} == collections.Counter(targets)
    assert body[0][0] == "`n00000000`" and body[-1][2] == "class 571"


def test_profile_and_checkpoint_sentences_say_the_budget():
    laptop = notebook_settings("05", "laptop")
    text = sentence_for_profile(laptop)
    assert "**laptop**" in text and f"{laptop['imagenette_images']} Imagenette val images" in text
    assert f"batches of {laptop['live_batch_size']} at {laptop['live_image_size']} px" in text
    paper = sentence_for_profile(notebook_settings("05", "paper"))
    assert "on all the Imagenette val images and all the ImageNet val-sample images" in paper
    record = {"command": "labkit train --recipe r", "profile": "laptop", "wall_time_s": 1174.2,
              "hardware": "CPU: X, 2 cores", "budget": {"steps": 16, "batch_size": 32, "train_images": 512,
                                                        "epochs": 1, "passes_per_step": 4,
                                                        "eval_images": {"a": 500, "b": 400}},
              "accuracy_by_set": {"a": {"8": 95.2, "2": 0.0}, "b": {"8": 79.2, "2": 0.2}}}
    sentence = checkpoint_sentence(record, 9938312)
    for part in ("`labkit train --recipe r`", "16 steps of 32 images", "512 Imagenette", "1 epoch,", "20 min",
                 "CPU: X, 2 cores", "9.5 MiB"):
        assert part in sentence
    assert recorded_accuracy_rows(record) == [{"set": "a", "images": 500, "accuracy": {8: 95.2, 2: 0.0}},
                                              {"set": "b", "images": 400, "accuracy": {8: 79.2, 2: 0.2}}]


# ------------------------------------------------------------------------------------------ labkit.imagenette_live


def test_live_budget_and_bad_sizes():
    from labkit.imagenette_live import live_budget, live_finetune_trainer

    smoke = notebook_settings("05", "smoke")
    assert live_budget(smoke) == {"train_images": smoke["live_train_images"], "batch_size": smoke["live_batch_size"],
                                  "eval_images": smoke["live_eval_images"], "image_size": smoke["live_image_size"]}
    with pytest.raises(LabkitError, match="notebook_settings"):
        live_budget({"profile": "smoke"})
    with pytest.raises(LabkitError, match="fewer than one batch"):
        live_finetune_trainer(train_images=2, batch_size=4, eval_images=2)
    with pytest.raises(LabkitError, match="whole number"):
        live_finetune_trainer(train_images=8, batch_size=0, eval_images=2)


def test_live_finetune_is_the_recipe_at_a_small_budget_and_its_result_is_the_trainers(tmp_path):
    from labkit.config import data_root
    from labkit.imagenette_live import RECIPE, live_finetune_trainer, result_rows
    from labkit.live_training import train_live

    if not (data_root() / "imagenette").is_dir():
        pytest.skip(f"no Imagenette under LABKIT_DATA={data_root()}")
    torch.set_num_threads(1)
    trainer = live_finetune_trainer(train_images=4, batch_size=4, eval_images=2, image_size=64, out_dir=tmp_path,
                                    profile="smoke")
    recipe = recipe_config(RECIPE, "smoke").to_dict()
    mine = trainer.config.to_dict()
    changed = {key for key in recipe if recipe[key] != mine[key]}
    assert changed <= {"epochs", "train_subset", "batch_size", "eval_subset", "image_size", "checkpoint_every",
                       "workers"}
    assert mine["workers"] == 0
    assert (mine["train_subset"], mine["batch_size"], mine["eval_subset"], mine["image_size"]) == (4, 4, 2, 64)
    assert trainer.total_steps == 1 and trainer.bits == (8, 6, 4, 2)
    assert {name: len(ds) for name, ds in trainer.eval_sets.items()} == {"imagenette-val": 2, "imagenet-val-sample": 2}
    view = train_live(trainer, show=False, progress=False)
    final = trainer.history[-1]
    rows = result_rows(trainer, view.result)
    assert [row["set"] for row in rows] == ["imagenette-val", "imagenet-val-sample"]
    for row in rows:
        assert row["images"] == 2
        assert row["accuracy"] == {b: final[f"{row['set']}_acc_{b}"] for b in (8, 6, 4, 2)}
    assert len(view.steps) == 1 and all(len(view.losses[b]) == 1 for b in (8, 6, 4, 2))
    assert (tmp_path / "checkpoint.pt").is_file()  # a folder the caller gave is kept


def test_live_finetune_removes_its_own_temporary_folder_with_the_trainer():
    import gc

    from labkit.config import data_root
    from labkit.imagenette_live import live_finetune_trainer

    if not (data_root() / "imagenette").is_dir():
        pytest.skip(f"no Imagenette under LABKIT_DATA={data_root()}")
    trainer = live_finetune_trainer(train_images=4, batch_size=4, eval_images=2, image_size=64, profile="smoke")
    folder = trainer.out_dir
    trainer.save_checkpoint()
    assert (folder / "checkpoint.pt").is_file()
    del trainer
    gc.collect()
    assert not folder.exists()


# ------------------------------------------------------------------------------------------ the notebook


def test_notebook_says_four_v100s_as_the_paper_table_5_and_torchrun_matches():
    text = "\n".join(cell.source for cell in notebook().cells)
    assert "4 V100" in text and "Table 5" in text
    assert "8 GPUs" not in text and "nproc_per_node=8" not in text and "8 processes" not in text
    assert text.count("--nproc_per_node=4") == 2 and "each of the 4 processes takes 64" in text


def test_notebook_text_is_for_students():
    text = "\n".join(cell.source for cell in notebook().cells)
    for remark in ("No GPU is lent", "lent to this notebook", "browser test", "nbval", "NBVAL"):
        assert remark not in text


def test_tables_render_as_markdown_and_nothing_prints_a_table_or_a_dict():
    cells = [cell for cell in notebook().cells if cell.cell_type == "code"]
    for cell in cells:
        assert "print(" not in cell.source or "feedback" in cell.source, cell.source[:200]
    checked = [cell for cell in cells if CHECK_TAG in cell.metadata.get("tags", [])]
    tables = [cell for cell in checked if "table(" in cell.source]
    assert len(tables) == 2  # the recipes and the classes
    for cell in tables:
        assert [output.output_type for output in cell.outputs] == ["display_data"]
        markdown = cell.outputs[0].data["text/markdown"]
        assert markdown.count("\n|") >= 3 and table_cells(markdown)
    for cell in checked:
        for output in cell.outputs:
            if output.output_type == "stream":
                assert " | " not in output.text and not re.search(r"\{'?\w+'?: ", output.text)


def test_every_long_cell_is_announced_with_its_time_and_shows_progress():
    cells = notebook().cells
    long_calls = ("measure(", "watch(")
    for position, cell in enumerate(cells):
        if cell.cell_type != "code" or not any(call in cell.source for call in long_calls):
            continue
        before = next(c for c in reversed(cells[:position]) if c.cell_type == "markdown").source
        assert re.search(r"takes (about )?[\w–-]+ (seconds|minutes?)", before) and "@" not in before, before[-300:]
        assert "progress=False" not in cell.source
    sources = [cell.source for cell in cells if cell.cell_type == "code"]
    assert any("measure(" in s for s in sources) and any("watch(trainer)" in s for s in sources)
    assert not any("reproduction import accuracy_figure" in s for s in sources)  # the figure for configurations


def test_live_training_is_opt_in_at_laptop_and_runs_by_itself_at_smoke():
    cells = [cell for cell in notebook().cells if cell.cell_type == "code"]
    flag = next(cell for cell in cells if cell.source.startswith("RUN_LIVE_TRAINING"))
    for profile, expected in (("laptop", False), ("smoke", True), ("paper", False)):
        namespace = {"settings": {"profile": profile}}
        exec(flag.source, namespace)
        assert namespace["RUN_LIVE_TRAINING"] is expected
    run = cells[cells.index(flag) + 1]
    assert run.source.startswith("if RUN_LIVE_TRAINING:") and "watch(trainer)" in run.source


def test_laptop_budget_fits_the_three_minute_goal():
    """The laptop evaluation: 100 images per set, each decoded once and scored at 5 precisions (the old one scored
    500 per set and decoded each image 5 times, about 7.5 min on 2 cores)."""
    laptop = notebook_settings("05", "laptop")
    assert laptop["imagenette_images"] + laptop["val_images"] <= 200
    smoke = notebook_settings("05", "smoke")
    assert smoke["live_train_images"] // smoke["live_batch_size"] == 2


def test_watch_gives_each_evaluation_set_its_own_marker_and_a_two_line_title(tmp_path):
    """The live view of notebook 05 on a tiny trainer with two evaluation sets (no data needed)."""
    from labkit.imagenette_live import watch
    from labkit.train import JointTrainer, TrainConfig

    torch.manual_seed(0)
    model = labkit.quantize_model(TinyNet(), (8, 2), example_input=torch.randn(2, 3, 8, 8))
    config = TrainConfig(bits=(8, 2), batch_size=4, epochs=1, workers=0, device="cpu", init_from=None,
                         eval_subset=None, train_subset=None, checkpoint_every=0, lr=0.01)
    trainer = JointTrainer(model, config, CountingImages(8), {"imagenette-val": CountingImages(4, 1),
                                                              "imagenet-val-sample": CountingImages(4, 2)},
                           tmp_path, 10, show_progress=False)
    view = watch(trainer, window=2, show=False)
    symbols = {trace.name: trace.marker.symbol for trace in view.figure.data if "val" in trace.name}
    assert symbols == {"8-bit imagenette-val": "diamond", "2-bit imagenette-val": "diamond",
                       "8-bit imagenet-val-sample": "square", "2-bit imagenet-val-sample": "square"}
    title = view.figure.layout.annotations[1].text
    assert "<br>" in title and "◆ imagenette-val" in title and "■ imagenet-val-sample" in title
    final = trainer.history[-1]
    for name in ("imagenette-val", "imagenet-val-sample"):
        assert view.result[name] == {str(b): final[f"{name}_acc_{b}"] for b in (8, 2)}
        trace = next(t for t in view.figure.data if t.name == f"8-bit {name}")
        assert list(trace.y) == [final[f"{name}_acc_8"]]  # the figure holds the trainer's own evaluation
