"""Writes NVlabs-format StyleGAN2 pickles for tests, with the globals a real snapshot uses.

stylegan2-ada-pytorch pickles each network as ``persistence._reconstruct_persistent_obj(meta)``
where ``meta`` carries the source of the network's module (run by the upstream loader), the
class name and the module's ``__dict__``; tensors and parameters pickle through torch's own
reducers (nested legacy ``torch.save`` blobs); constructor arguments are ``dnnlib.util.EasyDict``.
This writer produces that structure from a plain state dict, under stand-in modules named like
the upstream ones, so no third-party code is needed, and it embeds a source of our choosing:
the tests make it a trap that writes a file if it is ever executed.
"""

from __future__ import annotations

import collections
import contextlib
import pickle
import sys
import types

import numpy as np
import torch

BUFFERS = ("resample_filter", "noise_const", "w_avg")


class EasyDict(dict):
    pass


def _reconstruct_persistent_obj(meta):  # only its name is pickled
    raise RuntimeError("a stand-in for pickling only")


class Persistent:
    def __init__(self, class_name: str, state: dict, source: str) -> None:
        self.class_name, self.state, self.source = class_name, state, source

    def __reduce__(self):
        meta = {"type": "class", "version": 6, "module_src": self.source,
                "class_name": self.class_name, "state": self.state}  # fmt: skip
        return _reconstruct_persistent_obj, (meta,)


@contextlib.contextmanager
def _upstream_names():
    """Stand-ins for ``torch_utils.persistence`` and ``dnnlib.util`` while pickling."""
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")
    modules = {
        "torch_utils": types.ModuleType("torch_utils"),
        "torch_utils.persistence": persistence,
        "dnnlib": types.ModuleType("dnnlib"),
        "dnnlib.util": util,
    }
    for obj, module, name in ((_reconstruct_persistent_obj, persistence, "_reconstruct_persistent_obj"),
                              (EasyDict, util, "EasyDict")):  # fmt: skip
        setattr(module, name, obj)
        obj.__module__, obj.__qualname__ = module.__name__, name
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _module(class_name: str, tensors: dict, children: dict, source: str, kwargs=None) -> Persistent:
    hooks = ("_backward_pre_hooks", "_backward_hooks", "_forward_hooks", "_forward_pre_hooks",
             "_state_dict_hooks", "_load_state_dict_pre_hooks")  # fmt: skip
    state = {
        "training": False,
        "_parameters": collections.OrderedDict(
            (n, torch.nn.Parameter(t.clone(), requires_grad=False))
            for n, t in tensors.items()
            if n not in BUFFERS
        ),
        "_buffers": collections.OrderedDict(
            (n, t.clone()) for n, t in tensors.items() if n in BUFFERS
        ),  # fmt: skip
        "_non_persistent_buffers_set": set(),
        **{hook: collections.OrderedDict() for hook in hooks},
        "_modules": collections.OrderedDict(children),
        "_init_args": (),
        "_init_kwargs": EasyDict(kwargs or {}),
        "weight_gain": np.float64(0.125),  # plain attributes of NVlabs layers are numpy scalars
    }
    return Persistent(class_name, state, source)


def _tree(state_dict: dict, prefix: str, source: str, kwargs=None) -> Persistent:
    own = {k[len(prefix):]: v for k, v in state_dict.items()
           if k.startswith(prefix) and "." not in k[len(prefix):]}  # fmt: skip
    names = dict.fromkeys(k[len(prefix):].split(".")[0] for k in state_dict
                          if k.startswith(prefix) and "." in k[len(prefix):])  # fmt: skip
    children = {n: _tree(state_dict, f"{prefix}{n}.", source) for n in names}
    return _module("Generator" if not prefix else "Layer", own, children, source, kwargs)


def snapshot_pickle(state_dict: dict, init_kwargs: dict, source: str, protocol: int = 4,
                    extra: dict | None = None) -> bytes:  # fmt: skip
    """A training snapshot's bytes: G_ema from ``state_dict`` (NVlabs names), G a perturbed
    copy, a small D, ``training_set_kwargs`` and ``augment_pipe`` as upstream writes them."""
    kwargs = {k: EasyDict(v) if isinstance(v, dict) else v for k, v in init_kwargs.items()}
    G_ema = _tree(state_dict, "", source, kwargs)
    G = _tree({k: v if k.endswith(BUFFERS) else v + 0.01
               for k, v in state_dict.items()}, "", source, kwargs)  # fmt: skip
    D = _module("Discriminator", {"b4.fc.weight": torch.zeros(2, 2)}, {}, source)
    top = {"G": G, "D": D, "G_ema": G_ema, "augment_pipe": None,
           "training_set_kwargs": {"path": "faces.zip", "resolution": 64}, **(extra or {})}  # fmt: skip
    with _upstream_names():
        return pickle.dumps(top, protocol=protocol)


def globals_of(data: bytes) -> set[str]:
    """The ``module.name`` globals a pickle references, logged by an unpickler that rebuilds
    tensors with torch's own helpers and upstream objects as plain dicts (never their code)."""
    import io

    found: set[str] = set()
    stand_ins = {("torch_utils.persistence", "_reconstruct_persistent_obj"): dict,
                 ("dnnlib.util", "EasyDict"): dict,
                 ("torch.storage", "_load_from_bytes"):
                     lambda b: torch.load(io.BytesIO(b), weights_only=True)}  # fmt: skip

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            found.add(f"{module}.{name}")
            if (module, name) in stand_ins:
                return stand_ins[(module, name)]
            if module.split(".")[0] in ("torch", "collections", "numpy", "builtins"):
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    Recorder(io.BytesIO(data)).load()
    return found
