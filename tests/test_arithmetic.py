"""bf16 autocast / channels_last chosen for the device (labkit.train.arithmetic)."""
import torch

from labkit.train.arithmetic import cpu_flags, native_bf16, resolve_arithmetic
from labkit.train.config import parse_override


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: test\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\nprocessor\t: 1\n"
                    "flags\t\t: other\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_auto_turns_bf16_on_only_where_the_cpu_has_it():
    cpu = torch.device("cpu")
    assert native_bf16(cpu, {"avx512f", "avx512_bf16"}) and native_bf16(cpu, {"amx_bf16"})
    assert not native_bf16(cpu, {"avx512f", "avx512bw", "avx2"})  # emulated bf16 only: slower than fp32
    assert resolve_arithmetic(None, None, cpu, {"avx512_bf16"}) == (True, False)
    assert resolve_arithmetic(None, None, cpu, {"avx2"}) == (False, False)
    assert resolve_arithmetic(None, True, cpu, {"avx512_bf16"}) == (True, True)


def test_explicit_settings_win_over_the_device():
    cpu = torch.device("cpu")
    assert resolve_arithmetic(False, False, cpu, {"avx512_bf16"}) == (False, False)
    assert resolve_arithmetic(True, None, cpu, {"avx2"}) == (True, False)
    assert resolve_arithmetic(True, False, cpu, set()) == (True, False)


def test_auto_is_written_none_on_the_command_line():
    assert parse_override("amp_bf16=none") == ("amp_bf16", None)
    assert parse_override("channels_last=true") == ("channels_last", True)


def test_trainer_resolves_auto_for_its_device_and_records_it(tmp_path, monkeypatch):
    """JointTrainer with amp_bf16=None follows the CPU's flags (bf16 on a CPU with AVX-512 BF16, the plain path
    elsewhere), channels_last=None stays off, an explicit setting is kept on any CPU."""
    import labkit.train.arithmetic as arithmetic
    from tests.test_train_loop import first_batch, make_trainer

    for flags, expected in (({"avx512_bf16"}, (True, False)), ({"avx2"}, (False, False))):
        monkeypatch.setattr(arithmetic, "cpu_flags", lambda flags=flags: flags)
        trainer = make_trainer(tmp_path / str(expected[0]), amp_bf16=None, channels_last=None)
        assert (trainer.amp_bf16, trainer.channels_last) == expected
        images, labels, _ = first_batch()
        images = trainer._prepare(images, labels)[0]
        assert images.is_contiguous(memory_format=torch.channels_last) == expected[1]
    monkeypatch.setattr(arithmetic, "cpu_flags", lambda: {"avx512_bf16"})
    trainer = make_trainer(tmp_path / "off", amp_bf16=False, channels_last=True)
    assert (trainer.amp_bf16, trainer.channels_last) == (False, True)
    images, labels, _ = first_batch()
    assert trainer._prepare(images, labels)[0].is_contiguous(memory_format=torch.channels_last)


def test_cuda_auto_ignores_emulated_bf16(monkeypatch):
    """A pre-Ampere GPU reports bf16 'supported' only through emulation: auto must leave it off."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: calls.append(including_emulation) or including_emulation)
    assert native_bf16(torch.device("cuda")) is False and calls == [False]


def test_evaluation_runs_in_fp32_under_bf16_training(tmp_path, monkeypatch):
    """Training under bf16 autocast is evaluated in fp32 (the stored/exported model's arithmetic)."""
    import labkit.train.loop as loop
    from tests.test_train_loop import make_trainer

    seen = []
    real = loop.count_correct
    monkeypatch.setattr(loop, "count_correct", lambda *a, **k: seen.append(a[3]) or real(*a, **k))
    trainer = make_trainer(tmp_path, amp_bf16=True, channels_last=True)
    trainer.evaluate(trainer.eval_sets["test"])
    assert trainer.amp_bf16 and seen == [False, False, False]  # one fp32 evaluation per bit-width of (8, 4, 2)
