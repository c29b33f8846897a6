"""Validation of bit-widths: ``labkit.quant.check_bits`` and ``labkit.set_bits`` (METHOD.md §1–2, DESIGN.md).

A bad bit-width must raise one :class:`labkit.BitWidthError` whose message names the value that was passed and
the set the user may choose from (2..16 without a model; the trained bit set for a model), so the user can fix
the call in one go.
"""
import re

import numpy as np
import pytest
import torch
from torch import nn

import labkit
from labkit import BitWidthError
from labkit.quant import check_bits

TRAINED = (8, 6, 4, 2)
MALFORMED = [0, 1, -4, 2.5, "4", None, True, False, float("nan"), float("inf")]
NOT_TRAINED = [16, 5, 3, 7, 9]


def names_value(message: str, value) -> bool:
    """The message shows ``value`` (its repr, or its str for numbers) as a token of its own."""
    for text in {repr(value), str(value)}:
        if re.search(rf"(?<![\w.]){re.escape(text)}(?![\w])", message):
            return True
    return False


def names_trained_set(message: str) -> bool:
    """The message lists the trained set 8, 6, 4, 2 (in either order, any brackets/separators)."""
    return bool(re.search(r"8\D{1,3}6\D{1,3}4\D{1,3}2(?!\d)", message) or re.search(r"(?<!\d)2\D{1,3}4\D{1,3}6\D{1,3}8", message))


def names_valid_range(message: str) -> bool:
    return bool(re.search(r"(?<!\d)2(?!\d)", message) and re.search(r"(?<!\d)16(?!\d)", message))


def small_model():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )
    return labkit.quantize_model(net, TRAINED, example_input=torch.randn(1, 3, 10, 10))


@pytest.fixture(scope="module")
def model():
    return small_model()


def test_test_helpers():
    assert names_trained_set("is not in the trained bit set [8, 6, 4, 2]: use one")
    assert names_trained_set("choose from {2, 4, 6, 8}")
    assert not names_trained_set("bits=5 is outside 2..16")
    assert names_value("bits=-4 is outside", -4) and not names_value("bits=4 is outside", -4)
    assert names_value("got '4' (str)", "4") and names_value("got 2.5 (float)", 2.5)
    assert not names_value("bits=16 is bad", 1)


# ----------------------------------------------------------------------------- check_bits without a model


def rejection_message(call, value) -> str:
    with pytest.raises(BitWidthError) as info:
        call(value)
    return str(info.value)


def unhelpful(messages: list, wanted, what: str) -> str:
    """Collect every (value, message) whose message lacks ``wanted`` into one failure text ('' when all are fine).

    A list, not a dict: ``0 == False`` and ``1 == True`` would collide as dict keys.
    """
    bad = [(v, m) for v, m in messages if not wanted(m)]
    return "" if not bad else f"{len(bad)} message(s) do not name {what}:\n" + "\n".join(f"  {v!r}: {m}" for v, m in bad)


@pytest.mark.parametrize("value", MALFORMED + [17, 32, 10 ** 6], ids=repr)
def test_check_bits_rejects_bad_values_naming_the_value(value):
    message = rejection_message(check_bits, value)
    assert names_value(message, value), message


def test_check_bits_messages_name_the_valid_range():
    messages = [(v, rejection_message(check_bits, v)) for v in MALFORMED + [17, 32]]
    problem = unhelpful(messages, names_valid_range, "the valid range 2..16")
    assert not problem, problem


@pytest.mark.parametrize("value", [4, 4.0, np.int64(4), np.int32(4), np.int8(4), np.uint8(4), np.float64(4.0), torch.tensor(4).item()])
def test_check_bits_accepts_whole_numbers(value):
    result = check_bits(value)
    assert result == 4 and type(result) is int


@pytest.mark.parametrize("value", [2, 3, 5, 8, 16])
def test_check_bits_accepts_the_whole_range(value):
    assert check_bits(value) == value


def test_bit_width_error_is_a_value_error():
    assert issubclass(BitWidthError, ValueError) and issubclass(BitWidthError, labkit.LabkitError)


# ----------------------------------------------------------------------------- check_bits with a trained set


@pytest.mark.parametrize("value", MALFORMED + NOT_TRAINED, ids=repr)
def test_check_bits_with_allowed_set_rejects_naming_the_value(value):
    message = rejection_message(lambda v: check_bits(v, allowed=TRAINED), value)
    assert names_value(message, value), message


@pytest.mark.parametrize("value", NOT_TRAINED, ids=repr)
def test_check_bits_not_in_trained_set_names_the_set(value):
    assert names_trained_set(rejection_message(lambda v: check_bits(v, allowed=TRAINED), value))


def test_check_bits_with_allowed_set_every_message_names_the_set():
    messages = [(v, rejection_message(lambda x: check_bits(x, allowed=TRAINED), v)) for v in MALFORMED + NOT_TRAINED]
    problem = unhelpful(messages, names_trained_set, f"the trained set {list(TRAINED)}")
    assert not problem, problem


@pytest.mark.parametrize("value", [8, 6.0, np.int64(4), np.int16(2)])
def test_check_bits_with_allowed_set_accepts_members(value):
    result = check_bits(value, allowed=TRAINED)
    assert result == int(value) and type(result) is int


# ----------------------------------------------------------------------------- set_bits on a model


@pytest.mark.parametrize("value", MALFORMED + NOT_TRAINED, ids=repr)
def test_set_bits_rejects_naming_the_value_and_leaves_model_unchanged(model, value):
    before = labkit.get_bits(model)
    message = rejection_message(lambda v: labkit.set_bits(model, v), value)
    assert names_value(message, value), message
    assert labkit.get_bits(model) == before


@pytest.mark.parametrize("value", MALFORMED + NOT_TRAINED, ids=repr)
def test_set_bits_dict_rejects_naming_value_and_layer(model, value):
    name = next(iter(labkit.get_bits(model)))
    before = labkit.get_bits(model)
    message = rejection_message(lambda v: labkit.set_bits(model, {name: v}), value)
    assert names_value(message, value), message
    assert name in message, message  # which layer got the bad value
    assert labkit.get_bits(model) == before


@pytest.mark.parametrize("value", NOT_TRAINED, ids=repr)
def test_set_bits_not_in_trained_set_names_the_set(model, value):
    name = next(iter(labkit.get_bits(model)))
    assert names_trained_set(rejection_message(lambda v: labkit.set_bits(model, v), value))
    assert names_trained_set(rejection_message(lambda v: labkit.set_bits(model, {name: v}), value))


def test_set_bits_above_stored_precision_says_so(model):
    message = rejection_message(lambda v: labkit.set_bits(model, v), 16)
    assert "16" in message and "above" in message and names_trained_set(message)


def test_set_bits_every_message_names_the_trained_set(model):
    """On a model the user can only pick from the trained set, so every rejection should list it (not 2..16)."""
    name = next(iter(labkit.get_bits(model)))
    messages = [(v, rejection_message(lambda x: labkit.set_bits(model, x), v)) for v in MALFORMED + NOT_TRAINED]
    messages += [({name: v}, rejection_message(lambda x: labkit.set_bits(model, {name: x}), v))
                 for v in MALFORMED + NOT_TRAINED]
    problem = unhelpful(messages, names_trained_set, f"the trained set {list(TRAINED)}")
    assert not problem, problem


@pytest.mark.parametrize("value", [4, 4.0, np.int64(4), np.int32(4), np.float32(4.0)])
def test_set_bits_accepts_whole_numbers(value):
    model = small_model()
    labkit.set_bits(model, value)
    assert set(labkit.get_bits(model).values()) == {4}
    assert all(type(b) is int for b in labkit.get_bits(model).values())
    model(torch.randn(1, 3, 10, 10))  # the switchable BN keyed by str(bits) is found
    name = next(iter(labkit.get_bits(model)))
    labkit.set_bits(model, {name: np.int64(2) if not isinstance(value, float) else 2.0})
    assert labkit.get_bits(model)[name] == 2
    model(torch.randn(1, 3, 10, 10))


def test_set_bits_unknown_layer_name_raises_key_error_listing_names(model):
    names = list(labkit.get_bits(model))
    with pytest.raises(KeyError) as info:
        labkit.set_bits(model, {"no.such.layer": 4})
    message = str(info.value)
    assert "no.such.layer" in message
    for name in names:
        assert repr(name) in message or name in message, message


def test_rejected_dict_leaves_every_layer_and_bn_unchanged():
    """A set_bits call that raises must not half-apply: layers and their switchable BNs stay in sync."""
    model = small_model()
    first, second = list(labkit.get_bits(model))
    bns = {name: m.bits for name, m in model.named_modules() if isinstance(m, labkit.nn.SwitchableBatchNorm2d)}
    with pytest.raises(BitWidthError):
        labkit.set_bits(model, {first: 4, second: 5})
    assert labkit.get_bits(model) == {first: 8, second: 8}
    assert {name: m.bits for name, m in model.named_modules() if isinstance(m, labkit.nn.SwitchableBatchNorm2d)} == bns


def test_set_bits_on_a_float_model_is_refused():
    with pytest.raises((ValueError, BitWidthError)):
        labkit.set_bits(nn.Sequential(nn.Linear(2, 2)), 4)
