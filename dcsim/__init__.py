"""dcsim: fast simulation of spiking networks converted from LSQ-quantized CNNs, with Dynamic Confidence.

model = dcsim.models.small_cnn(num_classes=10, in_channels=1)   # LSQ activations, trained by you
net = dcsim.convert(model, method="qffs")                       # explicit spiking network
engine = dcsim.Engine(net)                                      # native kernels
sim = engine.simulate(x, steps=8)                               # per-step predictions
res = engine.early_exit(x, steps=8, readout=dcsim.Readout.paper("qffs", 2, 8), threshold=0.9)
"""

from . import analysis, data, models, training
from .convert import ConversionError, convert
from .engine import Engine
from .lsq import LSQActivation
from .models import build_model
from .network import SpikingNetwork
from .ops import backends
from .readout import Readout
from .state import BatchState, ExitResult, Simulation

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
