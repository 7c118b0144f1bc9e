"""The project's generators in NVlabs stylegan2-ada-pytorch's layout, for that project's tools.

``nvlabs_layout(G)`` gives the constructor arguments and the state dict, under NVlabs' names,
of the ``training.networks.Generator`` that computes what ``G`` computes: the inverse of
``advmix.importers`` reading an NVlabs snapshot. Nothing is pickled here: NVlabs' own code
builds its network from these and pickles it, with its source, the way its training does
(``benchmarks.bench_projector.py`` drives that).

Only NVlabs' architecture has an NVlabs twin: ``resample="fir"``, widths from
``channel_base``, no style count of our own. A generator with the project's bilinear
upsampling computes something else at the image borders and is refused in one line.
"""

from __future__ import annotations

import re

from torch import Tensor

from advmix.errors import AdvmixError
from advmix.layers import fir_kernel
from advmix.stylegan import Generator


class ExportError(AdvmixError):
    """A generator that NVlabs' architecture cannot reproduce."""


def nvlabs_layout(G: Generator) -> tuple[dict, dict[str, Tensor]]:
    """(init_kwargs, state_dict) of NVlabs' ``Generator`` computing ``G`` (module docstring)."""
    cfg = G.cfg
    if cfg.resample != "fir":
        raise ExportError(
            f"NVlabs generators resample with the FIR filter; this one is {cfg.resample!r} "
            "(only generators imported from NVlabs or rosinality checkpoints export exactly)"
        )
    if cfg.widths is not None and any(
        width != min(cfg.channel_base // res, cfg.channel_max)
        for width, res in zip(cfg.widths, cfg.block_resolutions, strict=True)
    ):
        raise ExportError(f"block widths {list(cfg.widths)} follow no NVlabs channel_base")
    init_kwargs = {
        "z_dim": cfg.z_dim, "c_dim": 0, "w_dim": cfg.w_dim,
        "img_resolution": cfg.resolution, "img_channels": cfg.img_channels,
        "mapping_kwargs": {"num_layers": cfg.mapping_layers,
                           "lr_multiplier": cfg.mapping_lr_multiplier,
                           "w_avg_beta": cfg.w_avg_beta},
        "synthesis_kwargs": {"channel_base": cfg.channel_base, "channel_max": cfg.channel_max,
                             "num_fp16_res": 0, "conv_clamp": cfg.conv_clamp},
    }  # fmt: skip
    state = {nvlabs_name(key, G): value.detach().clone() for key, value in G.state_dict().items()}
    state.update(_resample_filters(G))
    return init_kwargs, state


def nvlabs_name(key: str, G: Generator) -> str:
    """Our state-dict key -> NVlabs' (``synthesis_net.blocks.1.conv0.weight`` ->
    ``synthesis.b8.conv0.weight``)."""
    block = re.fullmatch(r"synthesis_net\.blocks\.(\d+)\.(.+)", key)
    if block:
        return f"synthesis.b{G.cfg.block_resolutions[int(block.group(1))]}.{block.group(2)}"
    layer = re.fullmatch(r"mapping_net\.layers\.(\d+)\.(weight|bias)", key)
    if layer:
        return f"mapping.fc{layer.group(1)}.{layer.group(2)}"
    if key == "mapping_net.w_avg":
        return "mapping.w_avg"
    raise ExportError(f"{key} has no NVlabs counterpart")


def _resample_filters(G: Generator) -> dict[str, Tensor]:
    """NVlabs keeps the [1, 3, 3, 1] filter as a buffer of every block and synthesis layer
    (ours derives it): the same tensor under each of its names."""
    state = {}
    for res in G.cfg.block_resolutions:
        layers = ["conv1"] if res == 4 else ["conv0", "conv1"]
        for name in ("", *(f"{layer}." for layer in layers)):
            state[f"synthesis.b{res}.{name}resample_filter"] = fir_kernel()
    return state
