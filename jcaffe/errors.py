"""jcaffe's exception types.

Every message names what is wrong and where: the file/line/column of a
prototxt, the layer and blob of a graph error, the layer, param index and both
shapes of a weight mismatch. Catch ``JcaffeError`` to catch them all.
"""


class JcaffeError(Exception):
    """Base class of every error jcaffe raises on purpose."""


class PrototxtError(JcaffeError, ValueError):
    """A text-format file that does not parse (message names file:line:col)."""

    def __init__(self, message, path=None, line=None, column=None):
        self.path, self.line, self.column = path, line, column
        where = path or "<string>"
        if line is not None:
            where += ":%d" % line
            if column is not None:
                where += ":%d" % column
        super().__init__("%s: %s" % (where, message))


class ProtoFileError(JcaffeError, IOError):
    """A binary proto file that is missing, unreadable or not the message expected."""


class UnknownLayerTypeError(JcaffeError, KeyError):
    """A layer type no registered class implements."""

    def __str__(self):  # KeyError would repr() the message
        return self.args[0]


class LayerSetupError(JcaffeError, ValueError):
    """A layer's parameters or bottom shapes are invalid (names the layer)."""


class NetGraphError(JcaffeError, ValueError):
    """The graph does not connect: unknown bottom, duplicate top, wrong counts."""


class ShapeMismatchError(JcaffeError, ValueError):
    """Weights or shared params whose shapes disagree (names both shapes)."""


class PythonLayerError(JcaffeError):
    """A user Python layer failed; the original exception is chained."""


class BackwardError(JcaffeError, RuntimeError):
    """A backward that Caffe refuses (label bottoms, layers without backward)."""


class SolverError(JcaffeError, ValueError):
    """A SolverParameter Caffe would refuse, or a snapshot that does not restore."""


class DeviceError(JcaffeError, ValueError):
    """A device selection or a distributed-runtime setup that cannot work (names the devices
    this process sees, or the coordinator and the timeout)."""
