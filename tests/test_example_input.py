"""quantize_model never probes a model with a made-up input shape (issue 13 item 2).

The plan needs one forward pass. It runs on ``example_input``, or on random data of the model's *known* input
shape (``model.input_shape``; the architecture record of ``build_model``), otherwise one
:class:`labkit.errors.ExampleInputError` says to pass ``example_input=`` — instead of the bare
``mat1 and mat2 shapes cannot be multiplied`` a 64×64 guess gave an MNIST net.
"""
import pytest
import torch
from torch import nn

import labkit
from labkit.convert import example_input_for, known_input_shape
from labkit.errors import ExampleInputError, LabkitError
from labkit.models import build_model


class MnistNet(nn.Module):
    """1×28×28 → conv → flatten → linear: runs on its own input size only."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.conv2 = nn.Conv2d(8, 8, 3)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8 * 24 * 24, 10)

    def forward(self, x):
        return self.fc(self.flatten(torch.relu(self.conv2(torch.relu(self.conv1(x))))))


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mnist_net_without_example_input_gets_one_clear_error():
    with pytest.raises(ExampleInputError, match=r"example_input=") as caught:
        labkit.quantize_model(MnistNet())
    assert isinstance(caught.value, LabkitError)
    assert "mat1 and mat2" not in str(caught.value)


def test_mnist_net_with_example_input_or_input_shape_is_planned_the_same():
    given = labkit.quantize_model(MnistNet(), example_input=torch.randn(2, 1, 28, 28))
    net = MnistNet()
    net.input_shape = (1, 28, 28)
    assert known_input_shape(net) == (1, 28, 28)
    found = labkit.quantize_model(net)
    assert found.labkit_quant == given.labkit_quant
    assert list(labkit.quantized_layers(found)) == ["conv2"]  # first and last layers stay FP32
    labkit.set_bits(found, 4)
    assert found(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_an_example_input_the_model_does_not_accept_is_named():
    with pytest.raises(ExampleInputError, match=r"example_input given \(shape \(2, 1, 64, 64\)\)") as caught:
        labkit.quantize_model(MnistNet(), example_input=torch.randn(2, 1, 64, 64))
    assert isinstance(caught.value.__cause__, RuntimeError)


@pytest.mark.parametrize("shape", [(28, 28, "x"), (), (1, 0, 28), 28, (True, 28)])
def test_a_malformed_input_shape_attribute_is_refused(shape):
    net = MnistNet()
    net.input_shape = shape
    with pytest.raises(ExampleInputError, match="input_shape"):
        labkit.quantize_model(net)


def test_the_lab_models_know_their_input_shape():
    resnet20 = build_model("resnet20")
    assert known_input_shape(resnet20) == (3, 32, 32)
    del resnet20.labkit_arch  # the class itself says so too
    assert known_input_shape(resnet20) == (3, 32, 32)
    assert example_input_for(resnet20).shape == (2, 3, 32, 32)
    assert known_input_shape(build_model("resnet18")) == (3, 224, 224)
    assert known_input_shape(build_model("efficientnet_lite0", pretrained=False)) == (3, 224, 224)
    assert known_input_shape(nn.Sequential(nn.Linear(4, 2))) is None


def test_the_probe_of_a_lab_model_runs_at_its_own_size():
    model = build_model("resnet20")
    shapes = []
    model.conv1.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    labkit.quantize_model(model)
    assert shapes == [(2, 3, 32, 32)]


def test_hasb_uses_the_same_error_class():
    from labkit import hasb

    assert hasb.ExampleInputError is ExampleInputError
