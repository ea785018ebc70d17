"""A pickle module for torch's loader (pickle_module argument): rebuilds tensors and plain containers only.

NVIDIA DeepLearningExamples checkpoints (`{"model": state_dict, "optimizer": ..., "files": [...],
"data_loader": <pickled DataLoader>}`) hold objects that `torch.load(weights_only=True)` refuses. This
unpickler resolves a global only from ALLOWED (tensor rebuild functions, dtypes, OrderedDict, plain
builtins); any other `module.name` becomes a fresh Placeholder subclass that records the name and accepts,
and ignores, whatever the pickle does with it (REDUCE/NEWOBJ arguments, BUILD state, appends, items).
So no class, function or `__reduce__` of the file is ever imported or called, and every replaced object
is reported by name.
"""
from __future__ import annotations

import collections
import pickle
import types

import torch

# Only constructors of data: tensor/parameter rebuilding, dtypes, sizes and plain containers.
ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Tensor"): torch.Tensor,
    ("torch", "Size"): torch.Size,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}
ALLOWED.update({("torch", name): value for name in dir(torch)
                if isinstance(value := getattr(torch, name), torch.dtype)})


class Placeholder:
    """Stands for an object of a class we refuse to import; swallows construction and state."""
    source = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass

    def __repr__(self):
        return f"<not loaded: {self.source}>"


class Unpickler(pickle.Unpickler):
    """Resolves ALLOWED globals; every other name becomes a Placeholder subclass, recorded in `replaced`."""
    replaced: set[str]

    def find_class(self, module, name):
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        self.replaced.add(f"{module}.{name}")
        return type(name, (Placeholder,), {"source": f"{module}.{name}"})


def restricted_load(path) -> tuple[object, list[str]]:
    """The object of a torch.save file (zip or legacy format) with every non-data object replaced by a
    Placeholder; returns (object, names of the replaced classes and functions)."""
    replaced: set[str] = set()
    unpickler = type("Unpickler", (Unpickler,), {"replaced": replaced})
    # torch.load reads the pickles through pickle_module.Unpickler and, for the legacy format, pickle_module.load
    module = types.SimpleNamespace(__name__=__name__, Unpickler=unpickler,
                                   load=lambda file, **kwargs: unpickler(file, **kwargs).load())
    # Safe although not weights_only: every global resolves through Unpickler.find_class (ALLOWED or a
    # Placeholder), so nothing named in the file is imported or executed.
    obj = torch.load(path, map_location="cpu", pickle_module=module, weights_only=False)
    return obj, sorted(replaced)
