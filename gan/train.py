"""StyleGAN2 training loop (``advmix gan train``), CPU or CUDA, resumable bit-exactly.

Per iteration (NVlabs stylegan2-ada ``loss.py`` phases, fused to save one generator pass):
1. G step: fakes from z (style mixing with probability ``style_mix_prob`` at a random cut,
   per sample), non-saturating logistic loss ``softplus(-D(G(z)))``.
2. D step on the same fakes (detached) and a real batch: ``softplus(D(fake)) +
   softplus(-D(real))``, plus every ``r1_interval`` iterations the lazy R1 penalty
   ``gamma/2 * ||grad D(real)||^2 * r1_interval`` (Adam's lr and betas adjusted for laziness).
3. EMA of the generator (half-life ``ema_kimg`` thousand images, ramped up over the first
   ``ema_rampup`` of training) — that copy is what gets evaluated and shipped.

Every random draw of iteration ``i`` comes from ``torch.manual_seed(f(seed, i))``, and the
checkpoint holds G, D, G_ema and both optimisers, so ``--resume`` continues bit-identically on
the same device. The run directory gets ``checkpoint.pt`` (atomic), ``log.jsonl``,
``network-snapshot-<iter>.pt`` (G_ema as a generator checkpoint), ``samples-<iter>.png`` and
``mixing-<iter>.png``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from advmix.checkpoints import atomic_save, safe_load, save_generator
from advmix.discriminator import Discriminator, DiscriminatorConfig
from advmix.errors import AdvmixError
from advmix.stylegan import Generator, GeneratorConfig, seeded_z, to_unit

TRAIN_CHECKPOINT_FORMAT = "advmix-gan-training-state"


@dataclass
class GANTrainConfig:
    dataset: str = "cfmnist:train-random"
    iterations: int = 10_000
    batch: int = 32
    lr: float = 0.0025
    betas: tuple[float, float] = (0.0, 0.99)
    r1_gamma: float = 0.01
    r1_interval: int = 16
    style_mix_prob: float = 0.9
    ema_kimg: float = 10.0
    ema_rampup: float | None = 0.05
    seed: int = 0
    snapshot_every: int = 1000
    sample_every: int = 500
    log_every: int = 50
    mix_k: int | None = None  # k for the training-time mixing grids (default num_ws // 2)
    # Fine-tuning: G (and its EMA) start from this generator file, whose fingerprint is
    # recorded so a resumed run checks it starts from the same weights; D starts fresh.
    init_from: str | None = None
    init_fingerprint: str | None = None
    G: GeneratorConfig = field(default_factory=GeneratorConfig)
    D: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GANTrainConfig:
        data = dict(data)
        data["G"] = GeneratorConfig.from_dict(data["G"])
        data["D"] = DiscriminatorConfig.from_dict(data["D"])
        data["betas"] = tuple(data["betas"])
        return cls(**data)

    def architecture(self) -> dict:
        """The parts that must match to resume (everything but run length, intervals and where
        the starting generator lies: its fingerprint is what identifies it)."""
        d = self.to_dict()
        for key in ("iterations", "snapshot_every", "sample_every", "log_every", "mix_k",
                    "init_from"):  # fmt: skip
            d.pop(key)
        return d


def starting_weights(cfg: GANTrainConfig) -> Generator:
    """The generator a fine-tuning run starts from, checked against the recorded fingerprint."""
    from advmix.checkpoints import generator_fingerprint, load_generator

    G = load_generator(cfg.init_from)
    if cfg.init_fingerprint is not None and generator_fingerprint(G) != cfg.init_fingerprint:
        raise AdvmixError(f"{cfg.init_from}: not the generator this run started from")
    if dataclasses.replace(G.cfg, k=None) != dataclasses.replace(cfg.G, k=None):
        raise AdvmixError(f"{cfg.init_from}: its architecture differs from the run's")
    return G


def fine_tuning(cfg: GANTrainConfig, init_from: str) -> GANTrainConfig:
    """``cfg`` set to start from the generator file ``init_from``: its architecture (the split
    k is left to be measured again on the new data) and its fingerprint."""
    from advmix.checkpoints import generator_fingerprint, load_generator

    G = load_generator(init_from)
    return dataclasses.replace(cfg, G=dataclasses.replace(G.cfg, k=None), init_from=str(init_from),
                               init_fingerprint=generator_fingerprint(G))  # fmt: skip


def iteration_seed(seed: int, it: int) -> int:
    return (seed * 1_000_003 + it * 7919 + 12345) % (2**63 - 1)


def images_to_generator_range(images_uint8: Tensor) -> Tensor:
    return images_uint8.to(torch.float32) / 127.5 - 1


def style_mixed_ws(G: Generator, z: Tensor, z2: Tensor, prob: float) -> Tensor:
    """Per-sample style mixing: with probability ``prob`` styles from the cut on come from z2."""
    ws = G.mapping(z)
    if prob <= 0:
        return ws
    ws2 = G.mapping(z2)
    batch, num_ws = ws.shape[0], ws.shape[1]
    cut = torch.randint(1, num_ws, (batch,), device=z.device)
    cut = torch.where(torch.rand(batch, device=z.device) < prob, cut, num_ws)
    take2 = torch.arange(num_ws, device=z.device)[None, :] >= cut[:, None]  # [B, num_ws]
    return torch.where(take2[:, :, None], ws2, ws)


@torch.no_grad()
def mixing_grid(G: Generator, k: int, rows: int = 6, cols: int = 6, seed: int = 1) -> Tensor:
    """StyleGAN Fig. 3 layout: top row = B sources, left column = A sources, cell (i, j) =
    coarse styles 0..k-1 from A_i and fine styles from B_j. Returns [(rows+1)*(cols+1), C, H, W]
    in [0, 1], row-major, the top-left cell blank."""
    device = next(G.parameters()).device
    ws_a = G.mapping(seeded_z(rows, G.z_dim, seed).to(device))
    ws_b = G.mapping(seeded_z(cols, G.z_dim, seed + 1).to(device))
    img_a, img_b = to_unit(G.synthesis(ws_a)), to_unit(G.synthesis(ws_b))
    cells = [torch.ones_like(img_a[0])] + list(img_b)
    for i in range(rows):
        mixed = G.synthesis(Generator.mix(ws_a[i : i + 1].expand(cols, -1, -1), ws_b, k))
        cells += [img_a[i]] + list(to_unit(mixed))
    return torch.stack(cells).cpu()


@torch.no_grad()
def sample_grid(G: Generator, n: int = 64, seed: int = 0, truncation_psi: float = 1.0) -> Tensor:
    device = next(G.parameters()).device
    return to_unit(G(seeded_z(n, G.z_dim, seed).to(device), truncation_psi=truncation_psi)).cpu()


def save_grid(images: Tensor, path: Path, nrow: int) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, str(path), nrow=nrow, padding=1, pad_value=1.0)


class GANTrainer:
    def __init__(self, cfg: GANTrainConfig, run_dir: Path, device: str = "cpu"):
        self.cfg, self.run_dir, self.device = cfg, Path(run_dir), torch.device(device)
        if cfg.G.resolution != cfg.D.resolution:
            raise AdvmixError("generator and discriminator resolutions differ")
        torch.manual_seed(cfg.seed)
        self.G = Generator(cfg.G).to(self.device).train()
        if cfg.init_from is not None:
            self.G.load_state_dict(starting_weights(cfg).state_dict())
        self.D = Discriminator(cfg.D).to(self.device).train()
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=cfg.betas, eps=1e-8)
        ratio = cfg.r1_interval / (cfg.r1_interval + 1)
        self.opt_D = torch.optim.Adam(
            self.D.parameters(),
            lr=cfg.lr * ratio,
            betas=(cfg.betas[0] ** ratio, cfg.betas[1] ** ratio),
            eps=1e-8,
        )
        self.iteration = 0
        self.elapsed_s = 0.0
        self.images: Tensor | None = None

    # -- state ---------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def state(self) -> dict:
        return {
            "format": TRAIN_CHECKPOINT_FORMAT,
            "config": json.dumps(self.cfg.to_dict(), sort_keys=True),
            "iteration": self.iteration,
            "elapsed_s": self.elapsed_s,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
        }

    def save_checkpoint(self) -> None:
        atomic_save(self.state(), self.checkpoint_path)

    def load_checkpoint(self, path: Path | None = None) -> None:
        path = path or self.checkpoint_path
        data = safe_load(path, map_location=self.device, what="GAN training checkpoint")
        if not isinstance(data, dict) or data.get("format") != TRAIN_CHECKPOINT_FORMAT:
            raise AdvmixError(f"{path}: not an advmix GAN training checkpoint")
        stored = GANTrainConfig.from_dict(json.loads(data["config"]))
        if stored.architecture() != self.cfg.architecture():
            diff = sorted(
                k for k, v in stored.architecture().items() if self.cfg.architecture().get(k) != v
            )
            raise AdvmixError(f"{path}: cannot resume, settings differ from the run's: {diff}")
        self.G.load_state_dict(data["G"])
        self.D.load_state_dict(data["D"])
        self.G_ema.load_state_dict(data["G_ema"])
        self.opt_G.load_state_dict(data["opt_G"])
        self.opt_D.load_state_dict(data["opt_D"])
        self.iteration = int(data["iteration"])
        self.elapsed_s = float(data["elapsed_s"])

    # -- data ----------------------------------------------------------------------------------
    def load_data(self, data_root: str | None = None) -> None:
        from advmix.datasets import load

        data = load(self.cfg.dataset, data_root=data_root)
        if data.images.shape[-1] != self.cfg.G.resolution:
            raise AdvmixError(
                f"{self.cfg.dataset}: images are {data.images.shape[-1]}px, "
                f"the generator makes {self.cfg.G.resolution}px"
            )
        self.images = torch.from_numpy(data.images)  # uint8, kept on the CPU

    def real_batch(self) -> Tensor:
        idx = torch.randint(0, len(self.images), (self.cfg.batch,))
        return images_to_generator_range(self.images[idx]).to(self.device)

    # -- one iteration -------------------------------------------------------------------------
    def step(self) -> dict:
        cfg, G, D = self.cfg, self.G, self.D
        it = self.iteration
        torch.manual_seed(iteration_seed(cfg.seed, it))
        real = self.real_batch()
        z = torch.randn(cfg.batch, cfg.G.z_dim, device=self.device)
        z2 = torch.randn(cfg.batch, cfg.G.z_dim, device=self.device)

        # G step: non-saturating logistic loss.
        D.requires_grad_(False)
        ws = style_mixed_ws(G, z, z2, cfg.style_mix_prob)
        fake = G.synthesis(ws, noise_mode="random")
        loss_G = F.softplus(-D(fake)).mean()
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self.opt_G.step()
        D.requires_grad_(True)

        # D step: logistic loss, lazy R1 on reals.
        do_r1 = cfg.r1_gamma > 0 and it % cfg.r1_interval == 0
        real_in = real.detach().requires_grad_(do_r1)
        logits_real = D(real_in)
        logits_fake = D(fake.detach())
        loss_D = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
        stats = {
            "loss_G": loss_G.item(),
            "loss_D": loss_D.item(),
            "D_real": logits_real.mean().item(),
            "D_fake": logits_fake.mean().item(),
        }
        total = loss_D
        if do_r1:
            (grad,) = torch.autograd.grad(logits_real.sum(), real_in, create_graph=True)
            r1 = grad.square().sum(dim=[1, 2, 3]).mean()
            total = total + r1 * (cfg.r1_gamma / 2) * cfg.r1_interval
            stats["r1"] = r1.item()
        self.opt_D.zero_grad(set_to_none=True)
        total.backward()
        self.opt_D.step()

        # EMA.
        nimg = (it + 1) * cfg.batch
        ema_nimg = cfg.ema_kimg * 1000
        if cfg.ema_rampup is not None:
            ema_nimg = min(ema_nimg, nimg * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), G.parameters(), strict=True):
                p_ema.copy_(p.detach().lerp(p_ema, beta))
            for b_ema, b in zip(self.G_ema.buffers(), G.buffers(), strict=True):
                b_ema.copy_(b)
        self.iteration += 1
        return stats

    # -- outputs -------------------------------------------------------------------------------
    def write_outputs(self, snapshot: bool) -> None:
        it = self.iteration
        k = self.cfg.mix_k or self.G_ema.num_ws // 2
        save_grid(sample_grid(self.G_ema), self.run_dir / f"samples-{it:06d}.png", nrow=8)
        save_grid(mixing_grid(self.G_ema, k), self.run_dir / f"mixing-{it:06d}.png", nrow=7)
        if snapshot:
            extra = {
                "iteration": it,
                "images_seen": it * self.cfg.batch,
                "train_wall_s": round(self.elapsed_s, 1),
                "train_config": self.cfg.to_dict(),
            }
            save_generator(self.G_ema, self.run_dir / f"network-snapshot-{it:06d}.pt", extra)

    def log(self, record: dict) -> None:
        with open(self.run_dir / "log.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def train(self, progress: bool = True, time_limit_s: float | None = None) -> None:
        """Run to ``cfg.iterations`` (or until ``time_limit_s`` of this session's wall time,
        then stop with a checkpoint and snapshot; ``--resume`` continues either way)."""
        from tqdm import tqdm

        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        bar = tqdm(
            total=cfg.iterations, initial=self.iteration, disable=not progress, unit="it",
            dynamic_ncols=True,
        )  # fmt: skip
        running: dict[str, list[float]] = {}
        session_start = time.perf_counter()
        while self.iteration < cfg.iterations:
            started = time.perf_counter()
            stats = self.step()
            self.elapsed_s += time.perf_counter() - started
            for key, value in stats.items():
                running.setdefault(key, []).append(value)
            it = self.iteration
            if not all(math.isfinite(v) for v in stats.values()):
                self.log({"iteration": it, "error": "non-finite loss", **stats})
                raise AdvmixError(f"training diverged at iteration {it}: {stats}")
            bar.update(1)
            if it % cfg.log_every == 0 or it == cfg.iterations:
                means = {k: float(np.mean(v)) for k, v in running.items()}
                running = {}
                bar.set_postfix({k: f"{v:.3f}" for k, v in means.items() if k != "r1"})
                self.log({"iteration": it, "elapsed_s": round(self.elapsed_s, 2), **means})
            out_of_time = (
                time_limit_s is not None and time.perf_counter() - session_start > time_limit_s
            )
            snap = it % cfg.snapshot_every == 0 or it == cfg.iterations or out_of_time
            if it % cfg.sample_every == 0 or snap:
                self.write_outputs(snapshot=snap)
            if snap:
                self.save_checkpoint()
            if out_of_time:
                self.log({"iteration": it, "stopped": "time limit"})
                break
        bar.close()
        save_generator(
            self.G_ema,
            self.run_dir / "generator.pt",
            {
                "iteration": self.iteration,
                "images_seen": self.iteration * cfg.batch,
                "train_wall_s": round(self.elapsed_s, 1),
                "train_config": cfg.to_dict(),
            },
        )


def set_threads(threads: int | None) -> None:
    """CPU intra-op threads. On a CPU shared with other jobs, 1 thread avoids the thread-pool
    stalls that made 2-thread iterations 10x slower in our runs."""
    if threads:
        torch.set_num_threads(threads)
