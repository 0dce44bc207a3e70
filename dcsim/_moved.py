"""Old import paths of modules that moved (into sub-packages, or renamed), kept for one release (0.1.x).

``import dcsim.engine`` (or ``from dcsim.engine import Engine``) still works: it warns with a
DeprecationWarning that names the new path, and gives a module whose attributes are the new
module's. There are no files at the old paths (so that version control sees the moves as renames).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence

MOVED: dict[str, str] = {
    "adapters": "conversion.adapters",
    "baseline": "sim.eager",
    "batching": "training.device_batches",
    "benchmark": "workflows.benchmark",
    "byom": "workflows.inputs",
    "calibration": "analysis.calibration",
    "checkpoint": "io.checkpoint",
    "convert": "conversion.convert",
    "engine": "sim.engine",
    "fileio": "io.atomic",
    "global_bn": "parallel.global_bn",
    "distributed": "parallel.distributed",
    "graphs": "sim.graphs",
    "latency": "sim.latency",
    "lsq": "models.lsq",
    "network": "sim.network",
    "normalize": "conversion.thresholds",
    "official": "conversion.official",
    "ops": "sim.ops",
    "pipeline": "workflows.dynamic_confidence",
    "plots": "analysis.plots",
    "readout": "sim.readout",
    "reference": "sim.reference",
    "report": "analysis.tables",
    "reproduce": "workflows.reproduce",
    "state": "sim.state",
    "streaming": "sim.continuous",
    "zoo": "io.zoo",
    "data.stream": "data.disk",
    "data.batching": "data",
}
"""Old module path under dcsim -> its new path under dcsim."""


class _Forward(types.ModuleType):
    """An old module path: attribute reads go to the new module. Calling it calls the new module's
    function of the same name, as ``dcsim.convert(...)`` did before (importing ``dcsim.convert`` binds
    this module to that attribute)."""

    def __getattr__(self, name: str) -> object:
        target = self.__dict__.get("target")
        if target is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(target, name)

    def __dir__(self) -> list[str]:
        return dir(self.__dict__["target"])

    def __call__(self, *args: object, **kwargs: object) -> object:
        return getattr(self.__dict__["target"], self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Alias(importlib.abc.Loader):
    """Loads ``dcsim.<old>`` as a :class:`_Forward` to ``dcsim.<new>``, with a DeprecationWarning."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _Forward(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        warnings.warn(
            f"{module.__name__} moved to {self.new}; the old path goes away in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        target = importlib.import_module(self.new)
        module.__dict__["target"] = target
        module.__doc__ = target.__doc__


class MovedModules(importlib.abc.MetaPathFinder):
    """Finds the old module paths of :data:`MOVED` (installed on ``sys.meta_path`` by ``import dcsim``)."""

    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        name = fullname.removeprefix(self.package + ".")
        if name == fullname or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(f"{self.package}.{MOVED[name]}"))


def install(package: str) -> None:
    """Put the finder of ``package``'s old module paths on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, MovedModules) and f.package == package for f in sys.meta_path):
        sys.meta_path.append(MovedModules(package))


def old_module(package: str, name: str) -> types.ModuleType:
    """``package.<name>`` for attribute access (``dcsim.engine``): the warning module of an old path."""
    if name not in MOVED:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return importlib.import_module(f"{package}.{name}")
