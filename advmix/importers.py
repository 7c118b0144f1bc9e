"""Public StyleGAN2 checkpoints as the project's own generators, read without running their code.

Two formats:

- **NVlabs stylegan2-ada-pytorch** (``network-snapshot-*.pkl``): a pickle whose networks are
  "persistent objects" carrying the Python source of their module, which the upstream loader
  ``exec``\\ s; its tensors are nested legacy ``torch.save`` blobs. We read it with an allow-list
  unpickler that knows only the globals a real snapshot uses: a persistent object comes back
  as data (class name and state; its source is hashed, never run), ``EasyDict`` as a dict,
  storage blobs through ``torch.load(weights_only=True)``, numpy scalars and dtypes of plain
  kinds only. Any other global is refused with one line naming it. ``G_ema`` is imported.
- **rosinality stylegan2-pytorch** (``.pt`` with ``g_ema`` and ``latent_avg``):
  ``torch.load(weights_only=True)``, with ``argparse.Namespace`` (the ``args`` of a training
  checkpoint) the one class allowed beyond tensors and containers. Widths come from the
  tensor shapes; ``latent_avg`` becomes ``w_avg``.

Both become a ``Generator`` with ``resample="fir"`` (NVlabs' exact architecture, fp16 layers
run in fp32); every name and shape is checked by a strict ``load_state_dict``.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from advmix.checkpoints import CheckpointError, load_failure_reason, weights_only_load
from advmix.layers import fir_kernel
from advmix.stylegan import Generator, GeneratorConfig

FORMATS = ("auto", "nvlabs", "rosinality")
UNSUPPORTED = (
    "supported: StyleGAN2 generators of NVlabs stylegan2-ada-pytorch (network-snapshot-*.pkl) "
    "and rosinality stylegan2-pytorch (.pt with g_ema)"
)


@dataclass
class Imported:
    generator: Generator
    info: dict  # format, source name, sha256, what was read: goes into the checkpoint's extra


def import_generator(path, fmt: str = "auto", k: int | None = None) -> Imported:
    """Read a public StyleGAN2 checkpoint at ``path`` (``fmt``: auto, nvlabs or rosinality)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    raw = path.read_bytes()
    if fmt == "auto":
        fmt = "rosinality" if raw[:2] == b"PK" else "nvlabs"  # torch.save archives are zips
    reader = {"nvlabs": _from_nvlabs, "rosinality": _from_rosinality}[fmt]
    G, info = reader(raw, path)
    if k is not None:
        if not 1 <= k < G.num_ws:
            raise CheckpointError(f"--k {k}: must be in 1..{G.num_ws - 1} for this generator")
        G.cfg.k = k
    info = {"format": fmt, "source": path.name, "sha256": hashlib.sha256(raw).hexdigest(), **info}
    return Imported(G.eval().requires_grad_(False), info)


def describe(G: Generator) -> str:
    """One line on the architecture an import found."""
    cfg = G.cfg
    widths = ", ".join(f"{r}:{cfg.channels(r)}" for r in cfg.block_resolutions)
    clamp = f", conv_clamp {cfg.conv_clamp:g}" if cfg.conv_clamp is not None else ""
    return (
        f"StyleGAN2 {cfg.resolution}x{cfg.resolution}x{cfg.img_channels}, z_dim {cfg.z_dim}, "
        f"w_dim {cfg.w_dim}, num_ws {G.num_ws}, mapping layers {cfg.mapping_layers}, "
        f"widths {{{widths}}}{clamp}"
    )


# ----------------------------------------------------------------------------------------------
# NVlabs pickles


@dataclass
class PersistentObject:
    """A network of an NVlabs pickle, as data: its class name and ``__dict__``."""

    class_name: str
    state: dict
    source_sha256: str  # of the module source it carried (never executed)


def _persistent(meta) -> PersistentObject:
    keys = {"type", "version", "module_src", "class_name", "state"}
    if not isinstance(meta, dict) or set(meta) != keys or meta["type"] != "class":
        raise pickle.UnpicklingError("a persistent object with unexpected metadata")
    if not isinstance(meta["module_src"], str) or not isinstance(meta["state"], dict):
        raise pickle.UnpicklingError("a persistent object with unexpected metadata")
    digest = hashlib.sha256(meta["module_src"].encode()).hexdigest()
    return PersistentObject(str(meta["class_name"]), meta["state"], digest)


class _EasyDict(dict):
    """``dnnlib.util.EasyDict`` read back as what it holds: a dict."""


def _storage_from_bytes(data: bytes):
    # The upstream helper is torch.load(weights_only=False) on these bytes: never use it.
    return weights_only_load(io.BytesIO(data))


def _plain_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("refused a numpy object dtype")
    return dtype


def _plain_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise pickle.UnpicklingError("refused a numpy scalar of an object dtype")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("numpy", "dtype"): _plain_dtype,
    ("numpy.core.multiarray", "scalar"): _plain_scalar,  # written by numpy 1
    ("numpy._core.multiarray", "scalar"): _plain_scalar,  # written by numpy 2
}


class _SnapshotUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        found = _ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: not one a StyleGAN2 snapshot uses"
            )
        return found

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent id: not used by StyleGAN2 snapshots")


def read_snapshot(raw: bytes, path) -> dict:
    """The top-level dict of an NVlabs pickle, networks as ``PersistentObject`` data."""
    if raw[:2] == b"PK":  # its bytes may happen to unpickle a little way: say what it is instead
        raise CheckpointError(f"{path}: not an NVlabs StyleGAN2 pickle (a zip archive, as "
                              f"torch.save writes); {UNSUPPORTED}")  # fmt: skip
    try:
        data = _SnapshotUnpickler(io.BytesIO(raw)).load()
    except Exception as exc:  # refused by our allow-list, truncated, or not a pickle at all
        message = str(exc).splitlines()[0][:200] if str(exc) else ""
        if not (isinstance(exc, pickle.UnpicklingError) and message.startswith("refused")):
            message = f"not an NVlabs StyleGAN2 pickle ({load_failure_reason(exc)}); {UNSUPPORTED}"
        raise CheckpointError(f"{path}: {message}") from None
    if not isinstance(data, dict) or not isinstance(data.get("G_ema"), PersistentObject):
        raise CheckpointError(f"{path}: no G_ema network in the pickle; {UNSUPPORTED}")
    return data


def module_state_dict(obj: PersistentObject, prefix: str = "") -> dict[str, Tensor]:
    """What ``state_dict()`` of the pickled module would give: parameters, persistent buffers,
    then child modules, depth first with dotted names."""
    state = obj.state
    out: dict[str, Tensor] = {}
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = value.detach()
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in skip:
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, PersistentObject):
            out.update(module_state_dict(child, f"{prefix}{name}."))
        elif child is not None:
            raise CheckpointError(f"module {prefix}{name} is not a network of the snapshot")
    return out


def _from_nvlabs(raw: bytes, path) -> tuple[Generator, dict]:
    snapshot = read_snapshot(raw, path)
    net = snapshot["G_ema"]
    if net.class_name != "Generator":
        raise CheckpointError(f"{path}: G_ema is {net.class_name}; {UNSUPPORTED}")
    kwargs = _plain(net.state.get("_init_kwargs") or {})
    cfg = _nvlabs_config(kwargs, path)
    weights = module_state_dict(net)
    if any(key.startswith("synthesis.input.") for key in weights):  # StyleGAN3's Fourier input
        raise CheckpointError(f"{path}: a StyleGAN3 (alias-free) generator; {UNSUPPORTED}")
    state = {}
    for key, value in weights.items():
        if key.endswith("resample_filter"):
            _check_filter(value, 1.0, key, path)
            continue
        state[_nvlabs_name(key, cfg, path)] = value
    G = _load(cfg, state, path)
    return G, {"class_name": net.class_name, "init_kwargs": kwargs,
               "module_source_sha256": net.source_sha256}  # fmt: skip


def _plain(value):
    """EasyDicts and OrderedDicts as plain JSON-able containers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _nvlabs_config(kwargs: dict, path) -> GeneratorConfig:
    mapping = kwargs.get("mapping_kwargs") or {}
    synthesis = kwargs.get("synthesis_kwargs") or {}
    problems = []
    if kwargs.get("c_dim", 0):
        problems.append(f"conditional (c_dim {kwargs['c_dim']})")
    if synthesis.get("architecture", "skip") != "skip":
        problems.append(f"architecture {synthesis['architecture']!r} (only 'skip')")
    if list(synthesis.get("resample_filter", [1, 3, 3, 1])) != [1, 3, 3, 1]:
        problems.append(f"resample filter {synthesis['resample_filter']}")
    if not synthesis.get("use_noise", True):
        problems.append("use_noise=False")
    if mapping.get("layer_features") not in (None, kwargs.get("w_dim")):
        problems.append("mapping layer_features != w_dim")
    if problems:
        raise CheckpointError(f"{path}: unsupported StyleGAN2 options: {', '.join(problems)}")
    try:
        return GeneratorConfig(
            z_dim=int(kwargs["z_dim"]), w_dim=int(kwargs["w_dim"]),
            resolution=int(kwargs["img_resolution"]), img_channels=int(kwargs["img_channels"]),
            mapping_layers=int(mapping.get("num_layers", 8)),
            mapping_lr_multiplier=float(mapping.get("lr_multiplier", 0.01)),
            w_avg_beta=float(mapping.get("w_avg_beta", 0.995)),
            channel_base=int(synthesis.get("channel_base", 32768)),
            channel_max=int(synthesis.get("channel_max", 512)),
            conv_clamp=None if synthesis.get("conv_clamp") is None
            else float(synthesis["conv_clamp"]),
            resample="fir",
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: G_ema's constructor arguments: {exc}") from None


def _nvlabs_name(key: str, cfg: GeneratorConfig, path) -> str:
    block = re.fullmatch(r"synthesis\.b(\d+)\.(.+)", key)
    if block:
        res = int(block.group(1))
        if res not in cfg.block_resolutions:
            raise CheckpointError(
                f"{path}: {key} is not a layer of a {cfg.resolution} px generator"
            )
        return f"synthesis_net.blocks.{cfg.block_resolutions.index(res)}.{block.group(2)}"
    layer = re.fullmatch(r"mapping\.fc(\d+)\.(weight|bias)", key)
    if layer:
        return f"mapping_net.layers.{layer.group(1)}.{layer.group(2)}"
    if key == "mapping.w_avg":
        return "mapping_net.w_avg"
    raise CheckpointError(f"{path}: unexpected tensor {key} in G_ema")


def _check_filter(value: Tensor, gain: float, key: str, path) -> None:
    if tuple(value.shape) != (4, 4) or not torch.allclose(value.float(), fir_kernel() * gain):
        raise CheckpointError(f"{path}: {key} is not the [1, 3, 3, 1] filter")


def _load(cfg: GeneratorConfig, state: dict[str, Tensor], path) -> Generator:
    G = Generator(cfg)
    try:
        G.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:240]
        raise CheckpointError(
            f"{path}: tensors do not fit the architecture read ({detail})"
        ) from None
    return G


# ----------------------------------------------------------------------------------------------
# rosinality checkpoints


def _from_rosinality(raw: bytes, path) -> tuple[Generator, dict]:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = weights_only_load(io.BytesIO(raw))
    except Exception as exc:  # an NVlabs pickle, a foreign class, a truncated or text file
        raise CheckpointError(
            f"{path}: not a rosinality checkpoint (a torch file of tensors and plain containers: "
            f"{load_failure_reason(exc)}); {UNSUPPORTED}"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("g_ema"), dict):
        raise CheckpointError(f"{path}: no g_ema state dict; {UNSUPPORTED}")
    weights = data["g_ema"]
    cfg = _rosinality_config(weights, path)
    state = _rosinality_state(weights, cfg, path)
    latent_avg = data.get("latent_avg")
    if latent_avg is not None:
        state["mapping_net.w_avg"] = torch.as_tensor(latent_avg).reshape(-1)
    else:
        state["mapping_net.w_avg"] = torch.zeros(cfg.w_dim)
    args = data.get("args")
    return _load(cfg, state, path), {
        "latent_avg": latent_avg is not None,
        "args": vars(args) if isinstance(args, argparse.Namespace) else None,
    }


def _rosinality_config(weights: dict, path) -> GeneratorConfig:
    try:
        style_dim = int(weights["style.1.weight"].shape[1])
        n_mlp = len([k for k in weights if re.fullmatch(r"style\.\d+\.weight", k)])
        convs = len([k for k in weights if re.fullmatch(r"convs\.\d+\.conv\.weight", k)])
        resolution = 2 ** (convs // 2 + 2)
        widths = [int(weights["input.input"].shape[1])]
        widths += [int(weights[f"convs.{2 * j}.conv.weight"].shape[1]) for j in range(convs // 2)]
        channels = int(weights["to_rgb1.conv.weight"].shape[1])
    except (KeyError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"{path}: g_ema lacks {exc}; {UNSUPPORTED}") from None
    if convs % 2 or not 8 <= resolution <= 1024:
        raise CheckpointError(f"{path}: {convs} style convolutions fit no StyleGAN2 resolution")
    return GeneratorConfig(
        z_dim=style_dim, w_dim=style_dim, resolution=resolution, img_channels=channels,
        mapping_layers=n_mlp, mapping_lr_multiplier=0.01, resample="fir", widths=tuple(widths),
    )  # fmt: skip


def _rosinality_state(weights: dict, cfg: GeneratorConfig, path) -> dict[str, Tensor]:
    """rosinality's names and shapes -> ours (the same parameters, laid out NVlabs' way)."""
    out: dict[str, Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> Tensor:
        if key not in weights:
            raise CheckpointError(f"{path}: g_ema lacks {key}")
        used.add(key)
        return torch.as_tensor(weights[key])

    for i in range(1, cfg.mapping_layers + 1):
        out[f"mapping_net.layers.{i - 1}.weight"] = take(f"style.{i}.weight")
        out[f"mapping_net.layers.{i - 1}.bias"] = take(f"style.{i}.bias")
    out["synthesis_net.blocks.0.const"] = take("input.input")[0]
    layers = [("conv1", "synthesis_net.blocks.0.conv1", 0)]
    for j in range(len(cfg.block_resolutions) - 1):
        layers += [(f"convs.{2 * j}", f"synthesis_net.blocks.{j + 1}.conv0", 2 * j + 1),
                   (f"convs.{2 * j + 1}", f"synthesis_net.blocks.{j + 1}.conv1", 2 * j + 2)]  # fmt: skip
    for theirs, ours, noise in layers:
        out[f"{ours}.weight"] = take(f"{theirs}.conv.weight")[0]
        out[f"{ours}.affine.weight"] = take(f"{theirs}.conv.modulation.weight")
        out[f"{ours}.affine.bias"] = take(f"{theirs}.conv.modulation.bias")
        out[f"{ours}.noise_strength"] = take(f"{theirs}.noise.weight").reshape(())
        out[f"{ours}.bias"] = take(f"{theirs}.activate.bias")
        out[f"{ours}.noise_const"] = take(f"noises.noise_{noise}")[0, 0]
        if f"{theirs}.conv.blur.kernel" in weights:  # the upsampling convs' FIR
            _check_filter(take(f"{theirs}.conv.blur.kernel"), 4.0, f"{theirs}.conv.blur.kernel",
                          path)  # fmt: skip
    rgbs = [("to_rgb1", "synthesis_net.blocks.0.torgb")]
    rgbs += [(f"to_rgbs.{j}", f"synthesis_net.blocks.{j + 1}.torgb")
             for j in range(len(cfg.block_resolutions) - 1)]  # fmt: skip
    for theirs, ours in rgbs:
        out[f"{ours}.weight"] = take(f"{theirs}.conv.weight")[0]
        out[f"{ours}.affine.weight"] = take(f"{theirs}.conv.modulation.weight")
        out[f"{ours}.affine.bias"] = take(f"{theirs}.conv.modulation.bias")
        out[f"{ours}.bias"] = take(f"{theirs}.bias").reshape(-1)
        if f"{theirs}.upsample.kernel" in weights:
            _check_filter(take(f"{theirs}.upsample.kernel"), 4.0, f"{theirs}.upsample.kernel",
                          path)  # fmt: skip
    left = sorted(set(weights) - used)
    if left:
        raise CheckpointError(f"{path}: unexpected tensors in g_ema: {', '.join(left[:4])}")
    return out
