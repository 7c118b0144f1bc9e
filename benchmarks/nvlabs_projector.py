"""NVlabs stylegan2-ada-pytorch's own code, driven on the CPU for ``benchmarks.bench_projector.py``.

Runs in a process of its own with the user's checkout first on ``sys.path`` (``--upstream``);
imports nothing from this project, and nothing of the checkout enters it.

- ``pickle``: build NVlabs' ``training.networks.Generator`` from constructor arguments and a
  state dict (``advmix.exporters.nvlabs_layout``, saved with ``torch.save``), and pickle it
  the way its training loop writes a snapshot: ``G``, ``D`` (a fresh discriminator: the
  loader requires one), ``G_ema``, ``training_set_kwargs``, ``augment_pipe``; each network a
  CPU copy in eval mode, pickled with its module's source by NVlabs' persistence.
- ``project``: load that pickle as ``projector.py`` does (``legacy.load_network_pkl``, key
  ``G_ema``) and run its ``project()`` as shipped on each target (uint8 [N, C, H, W] in a
  ``.npy``), then render the final W as its CLI renders ``proj.png``
  (``G.synthesis(w, noise_mode='const')``: ``project()`` optimises noise maps on a copy of
  the generator and returns W alone). Only the device differs from its CLI, which hard-codes
  ``cuda``. Writes ``ws`` [N, num_ws, w_dim], ``images`` [N, C, H, W] in [-1, 1] and
  ``seconds`` (wall time of each ``project()`` call) to an ``.npz``.
"""

from __future__ import annotations

import argparse
import copy
import json
import pickle
import sys
import time

import numpy as np
import torch


def write_pickle(layout: str, out: str) -> None:
    from training.networks import Discriminator, Generator

    payload = torch.load(layout, weights_only=True)
    kwargs = json.loads(payload["init_kwargs"])
    G = Generator(**kwargs)
    G.load_state_dict(payload["state_dict"], strict=True)
    D = Discriminator(c_dim=0, img_resolution=kwargs["img_resolution"],
                      img_channels=kwargs["img_channels"])  # fmt: skip
    snapshot = {"training_set_kwargs": None, "augment_pipe": None}
    for name, module in (("G", G), ("D", D), ("G_ema", G)):
        snapshot[name] = copy.deepcopy(module).eval().requires_grad_(False).cpu()
    with open(out, "wb") as f:
        pickle.dump(snapshot, f)


def project_all(network: str, targets: str, out: str, steps: int) -> None:
    import legacy
    from projector import project

    device = torch.device("cpu")
    with open(network, "rb") as f:
        G = legacy.load_network_pkl(f)["G_ema"].requires_grad_(False).to(device)
    images = np.load(targets)
    ws, renders, seconds = [], [], []
    for i, target in enumerate(images):
        started = time.perf_counter()
        w_steps = project(G, target=torch.tensor(target, device=device), num_steps=steps,
                          device=device)  # fmt: skip
        seconds.append(time.perf_counter() - started)
        w = w_steps[-1:]
        with torch.no_grad():
            renders.append(G.synthesis(w, noise_mode="const")[0].numpy())
        ws.append(w[0].numpy())
        print(f"projected {i + 1}/{len(images)} in {seconds[-1]:.1f} s", flush=True)
    np.savez(out, ws=np.stack(ws), images=np.stack(renders), seconds=np.array(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="a stylegan2-ada-pytorch checkout")
    commands = parser.add_subparsers(dest="command", required=True)
    pickling = commands.add_parser("pickle")
    pickling.add_argument("layout")
    pickling.add_argument("out")
    projecting = commands.add_parser("project")
    projecting.add_argument("network")
    projecting.add_argument("targets")
    projecting.add_argument("out")
    projecting.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    sys.path.insert(0, args.upstream)
    torch.set_num_threads(1)  # the same single thread as our side of the comparison
    if args.command == "pickle":
        write_pickle(args.layout, args.out)
    else:
        project_all(args.network, args.targets, args.out, args.steps)


if __name__ == "__main__":
    main()
