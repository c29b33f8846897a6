"""The lab's exceptions: each one names the problem and says what to do."""


class LabkitError(Exception):
    """Base class of every error the lab raises on purpose."""


class BitWidthError(LabkitError, ValueError):
    """A bit-width that is not a whole number >= 2, or not one the model was trained for."""


class CheckpointError(LabkitError, ValueError):
    """A checkpoint file that is missing, truncated, corrupted, or for another architecture."""


class DataNotFoundError(LabkitError, FileNotFoundError):
    """A data folder that is missing or empty."""


class DataLayoutError(LabkitError, ValueError):
    """A data folder that exists but is not laid out as expected (unknown class folders, malformed class list)."""


class ExampleInputError(LabkitError, ValueError):
    """A model had to be run on an input (to plan its quantization, to trace it, to count its costs), and none
    was given, none could be found without guessing, or the model did not accept the one given."""


class ScaleShapeError(LabkitError, ValueError):
    """A quantization scale whose shape does not broadcast to its tensor's shape without changing it."""


class LayerNameError(LabkitError, KeyError):
    """A layer name that is not one of the model's quantized layers."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""
