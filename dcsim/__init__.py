"""dcsim: fast simulation of spiking networks converted from LSQ-quantized CNNs, with Dynamic Confidence.

model = dcsim.models.small_cnn(num_classes=10, in_channels=1)   # LSQ activations, trained by you
net = dcsim.convert(model, method="qffs")                       # explicit spiking network
engine = dcsim.Engine(net)                                      # native kernels
sim = engine.simulate(x, steps=8)                               # per-step predictions
res = engine.early_exit(x, steps=8, readout=dcsim.Readout.paper("qffs", 2, 8), threshold=0.9)
"""

from types import ModuleType

from . import _moved, analysis, data, models, training
from .conversion.convert import ConversionError, convert
from .models import build_model
from .models.lsq import LSQActivation
from .sim.engine import Engine
from .sim.network import SpikingNetwork
from .sim.ops import backends
from .sim.readout import Readout
from .sim.state import BatchState, ExitResult, Simulation

__all__ = [
    "BatchState",
    "ConversionError",
    "Engine",
    "ExitResult",
    "LSQActivation",
    "Readout",
    "Simulation",
    "SpikingNetwork",
    "analysis",
    "backends",
    "build_model",
    "convert",
    "data",
    "models",
    "training",
]
__version__ = "0.1.0"

_moved.install(__name__)


def __getattr__(name: str) -> ModuleType:
    """The old module paths (``dcsim.engine``, ...) for one release, with a DeprecationWarning (see dcsim._moved)."""
    return _moved.old_module(__name__, name)
