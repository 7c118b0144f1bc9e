"""Stage 2: train a classifier on a latent store with nominal, AT, RandMix, AdvMix or mixup.

One ``Trainer`` runs on CPU or CUDA, alone or as one rank of ``torchrun`` (DDP: gloo on CPU,
nccl on GPUs). Inputs of the classifier are images in ``[0, 1]``: the store's source images
(nominal examples; decoded from ``w`` when the store has none) and decoded style mixes.

Reproducibility: the model is initialised from ``seed``; every random draw of a step (mixing
latents, PGD starts, mixup pairs) comes from a ``torch.Generator`` seeded by
``(seed, rank, step)``; the data order is the stream's (seed + epoch). A checkpoint holds the
model, the optimiser, the global RNG states (as tensors and plain lists) and the stream
state of every rank, written to a temporary file and renamed. ``--resume`` continues at the
next unseen sample, so an interrupted run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advmix import attacks
from advmix.classifiers import ClassifierConfig, SmallCNN, save_classifier
from advmix.errors import AdvmixError
from advmix.stylegan import (
    CheckpointError,
    _atomic_torch_save,
    generator_fingerprint,
    load_generator,
    safe_torch_load,
)

METHODS = ("nominal", "at", "randmix", "advmix", "mixup")
CHECKPOINT_FORMAT = "advmix-train-checkpoint"
CHECKPOINT_VERSION = 1
# Which examples a step trains on for the methods that make perturbed examples.
# "both": the nominal batch and its perturbed copy (2B inputs); "mixes": the perturbed ones.
TRAIN_ON = ("both", "mixes")
DEFAULT_TRAIN_ON = {"at": "mixes", "randmix": "both", "advmix": "both"}


@dataclass
class TrainConfig:
    store: str
    generator: str
    method: str = "advmix"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    attack_steps: int = 5
    restarts: int = 1
    step_size: float = 0.25
    projection: str = "ball"
    early_stop: bool = True
    train_on: str | None = None  # None: DEFAULT_TRAIN_ON[method]
    eps: float = 8 / 255
    pgd_steps: int = 7
    mixup_alpha: float = 1.0
    grayscale: bool = False
    width: int = 32
    buffer_size: int = 4096
    workers: int = 0
    checkpoint_every: int = 50
    log_every: int = 10
    max_steps: int | None = None  # stop after this many steps in total (tests, smoke runs)
    storage_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.train_on is None:
            self.train_on = DEFAULT_TRAIN_ON.get(self.method, "both")
        if self.train_on not in TRAIN_ON:
            raise ValueError(f"train_on must be one of {TRAIN_ON}, got {self.train_on!r}")
        if self.projection not in attacks.PROJECTIONS:
            raise ValueError(f"projection must be one of {attacks.PROJECTIONS}")

    def to_dict(self, redact: bool = True) -> dict:
        data = dataclasses.asdict(self)
        if redact:
            from schemas.urls import mask, redact_url

            data["storage_options"] = mask(data["storage_options"])
            data["store"] = redact_url(data["store"])
        return data

    # Settings that must not change across --resume (the rest may, e.g. epochs).
    FIXED = (
        "method", "batch_size", "lr", "weight_decay", "seed", "attack_steps", "restarts",
        "step_size", "projection", "early_stop", "train_on", "eps", "pgd_steps",
        "mixup_alpha", "grayscale", "width", "buffer_size", "workers",
    )  # fmt: skip


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + rank * 7_919 + step) % (2**63 - 1))


def images_to_unit(images: Tensor) -> Tensor:
    return images.to(torch.float32) / 255.0


class Classifier(nn.Module):
    """SmallCNN that takes RGB images in [0, 1] and applies its input mode (gray for the
    colour-blind oracle) itself."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.net = SmallCNN(cfg=cfg)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.net.prepare(x))


def make_classifier(num_classes: int, width: int, grayscale: bool) -> Classifier:
    cfg = ClassifierConfig(
        num_classes=num_classes,
        in_channels=1 if grayscale else 3,
        width=width,
        input_mode="gray-max" if grayscale else "rgb",
    )
    return Classifier(cfg)


# ----------------------------------------------------------------------------------------------
# Distributed setup


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        torch.cuda.set_device(local)
    return Dist(rank, world, local)


# ----------------------------------------------------------------------------------------------
# RNG state as tensors and plain types (torch.load weights_only=True)


def rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# Run record


def package_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("advmix", "torch", "torchvision", "numpy", "zarr", "pyarrow", "fsspec", "click"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def git_sha() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def redact_argv(argv: list[str]) -> list[str]:
    """The command line with storage-option values masked (they may hold credentials)."""
    out, hide = [], False
    for arg in argv:
        if hide:
            out.append(arg.split("=", 1)[0] + "=***")
            hide = False
        elif arg.startswith("--storage-option="):
            out.append("--storage-option=" + arg.split("=", 2)[1] + "=***")
        else:
            out.append(arg)
            hide = arg == "--storage-option"
    return out


def store_fingerprint(store) -> str:
    """sha256 of the store's manifest (it lists every object's sha256)."""
    from schemas.layout import MANIFEST

    return hashlib.sha256(store.location.read(MANIFEST)).hexdigest()


# ----------------------------------------------------------------------------------------------
# Trainer


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, device: str = "cpu"):
        from schemas.reader import open_store
        from training.stream import LatentStream

        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.device = torch.device(device)
        self.dist = init_distributed(device)
        if self.dist.enabled and device == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.G = load_generator(cfg.generator, map_location=str(self.device))
        self.g_fingerprint = generator_fingerprint(self.G.cpu()).lower()
        self.G.to(self.device)
        self.store = open_store(
            cfg.store, cfg.storage_options or None, expect_generator=self.g_fingerprint
        )
        if self.store.num_ws != self.G.num_ws or self.store.w_dim != self.G.w_dim:
            raise AdvmixError(
                f"store styles are [{self.store.num_ws}, {self.store.w_dim}], the generator's "
                f"[{self.G.num_ws}, {self.G.w_dim}]"
            )
        self.k = self.store.k if self.store.k is not None else self.G.cfg.k
        if self.k is None:
            raise AdvmixError("neither the store nor the generator records k (coarse styles)")
        self.num_classes = max(len(self.store.label_names), 2)
        self.stream = LatentStream(
            self.store,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            buffer_size=cfg.buffer_size,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            num_workers=cfg.workers,
        )
        torch.manual_seed(cfg.seed)
        self.model = make_classifier(self.num_classes, cfg.width, cfg.grayscale).to(self.device)
        self.opt = torch.optim.Adam(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        # The valid fine-style set: AdvMix's projection, also used by every method's grids.
        self.style_set = attacks.FineStyleSet.fit(self.G, self.k, cfg.projection, seed=cfg.seed).to(
            self.device
        )
        self.ddp = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.model, device_ids=ids)
        self.step = 0
        self.epoch = 0
        self.elapsed_s = 0.0
        self.tb = None

    # -- paths ------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    # -- checkpoints ------------------------------------------------------------------------

    def _rank_states(self) -> list[dict]:
        """Every rank's stream state and step count (ranks can differ by a batch an epoch)."""
        state = {"stream": self.stream.state_dict(), "step": self.step}
        if not self.dist.enabled:
            return [state]
        import torch.distributed as dist

        states: list = [None] * self.dist.world_size
        dist.all_gather_object(states, state)
        return states

    def save_checkpoint(self, epoch_done: bool = False) -> None:
        ranks = self._rank_states()
        if not self.dist.main:
            return
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": json.dumps(self.cfg.to_dict(), sort_keys=True),
            "classifier_config": self.model.net.cfg.to_json(),
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "rng": rng_state(),
            "stream": [r["stream"] for r in ranks],
            "rank_steps": [r["step"] for r in ranks],
            "epoch": self.epoch,
            "epoch_done": epoch_done,
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "generator_fingerprint": self.g_fingerprint,
            "k": self.k,
        }
        _atomic_torch_save(payload, self.checkpoint_path)

    def load_checkpoint(self) -> None:
        data = safe_torch_load(self.checkpoint_path, what="training checkpoint")
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{self.checkpoint_path}: not an advmix training checkpoint")
        saved = json.loads(data["config"])
        mine = self.cfg.to_dict()
        changed = [key for key in TrainConfig.FIXED if saved.get(key) != mine.get(key)]
        if changed:
            raise AdvmixError(
                f"cannot resume {self.run_dir}: settings differ from the run's "
                f"({', '.join(f'{k}: {saved.get(k)!r} -> {mine.get(k)!r}' for k in changed)})"
            )
        if data["generator_fingerprint"] != self.g_fingerprint:
            raise AdvmixError(
                f"cannot resume {self.run_dir}: it was trained with another generator"
            )
        if len(data["stream"]) != self.dist.world_size:
            raise AdvmixError(
                f"cannot resume {self.run_dir}: it ran on {len(data['stream'])} processes, "
                f"now {self.dist.world_size}"
            )
        self.model.load_state_dict(data["model"])
        self.opt.load_state_dict(data["optimizer"])
        set_rng_state(data["rng"])
        self.step = int(data["rank_steps"][self.dist.rank])
        self.elapsed_s = float(data["elapsed_s"])
        if data["epoch_done"]:
            self.epoch = int(data["epoch"]) + 1
            self.stream.set_epoch(self.epoch)
        else:
            self.stream.load_state_dict(data["stream"][self.dist.rank])
            self.epoch = self.stream.epoch
        self._resumed = True
        if self.dist.main and self.metrics_path.exists():
            # Drop metrics the interrupted run logged after its last checkpoint.
            lines = self.metrics_path.read_text().splitlines()
            keep = [line for line in lines if json.loads(line).get("step", 0) <= self.step]
            self.metrics_path.write_text("".join(line + "\n" for line in keep))

    # -- one step -----------------------------------------------------------------------------

    def nominal_images(self, batch: dict) -> Tensor:
        if "image" in batch:
            return images_to_unit(batch["image"].to(self.device))
        with torch.no_grad():
            return attacks.to_unit(self.G.synthesis(batch["w"].to(self.device)))

    def perturbed(self, x: Tensor, w: Tensor, y: Tensor, gen: torch.Generator) -> tuple:
        """(perturbed inputs, info dict) for the step's method."""
        cfg, module = self.cfg, self.model
        if cfg.method == "at":
            return attacks.pgd_linf(module, x, y, cfg.eps, steps=cfg.pgd_steps, generator=gen), {}
        if cfg.method == "randmix":
            images, _ = attacks.randmix(self.G, w, self.k, gen)
            return images, {}
        result = attacks.advmix(
            module, self.G, w, y, self.k, self.style_set, steps=cfg.attack_steps,
            restarts=cfg.restarts, step_size=cfg.step_size, early_stop=cfg.early_stop,
            generator=gen,
        )  # fmt: skip
        return result.images, {
            "fooled": result.fooled.float().mean().item(),
            "evaluations": result.evaluations,
        }

    def train_step(self, batch: dict) -> dict:
        cfg = self.cfg
        gen = step_generator(cfg.seed, self.dist.rank, self.step)
        x = self.nominal_images(batch)
        y = batch["label"].to(self.device)
        w = batch["w"].to(self.device)
        info: dict = {}
        net = self.ddp if self.ddp is not None else self.model
        self.model.train()
        if cfg.method == "mixup":
            xm, ya, yb, lam = attacks.mixup(x, y, cfg.mixup_alpha, gen)
            logits = net(xm)
            loss = attacks.mixup_loss(logits, ya, yb, lam)
            pred = logits.argmax(1)
            acc = (lam * (pred == ya).float() + (1 - lam) * (pred == yb).float()).mean()
        else:
            if cfg.method == "nominal":
                inputs, targets = x, y
            else:
                xp, info = self.perturbed(x, w, y, gen)
                if cfg.train_on == "both":
                    inputs, targets = torch.cat([x, xp]), torch.cat([y, y])
                else:
                    inputs, targets = xp, y
            logits = net(inputs)
            loss = F.cross_entropy(logits, targets)
            acc = (logits.argmax(1) == targets).float().mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), "acc": acc.item(), **info}

    # -- outputs ------------------------------------------------------------------------------

    def log(self, record: dict) -> None:
        if not self.dist.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "epoch"):
                    self.tb.add_scalar(f"{record.get('event', 'train')}/{key}", value, self.step)
            self.tb.flush()

    def write_grid(self) -> None:
        """Nominal images (top), the generator's reconstructions G(w), AdvMix mixes against the
        current model, and RandMix mixes (bottom) of the first samples of shard 0."""
        if not self.dist.main:
            return
        from torchvision.utils import save_image

        from training.stream import _ShardReader

        data = _ShardReader(self.store, self.store.has_images, 0).read(0)
        n = min(8, len(data["label"]))
        w = torch.from_numpy(np.asarray(data["w"][:n], dtype=np.float32)).to(self.device)
        y = torch.from_numpy(np.asarray(data["label"][:n], dtype=np.int64)).to(self.device)
        gen = torch.Generator().manual_seed(self.cfg.seed + 10_007 * (self.epoch + 1))
        with torch.no_grad():
            recon = attacks.to_unit(self.G.synthesis(w))
            nominal = (
                images_to_unit(torch.from_numpy(np.asarray(data["image"][:n])).to(self.device))
                if "image" in data
                else recon
            )
        mixes = attacks.advmix(
            self.model, self.G, w, y, self.k, self.style_set, steps=self.cfg.attack_steps,
            restarts=self.cfg.restarts, step_size=self.cfg.step_size, generator=gen,
        ).images  # fmt: skip
        rand, _ = attacks.randmix(self.G, w, self.k, gen)
        grid = torch.cat([nominal, recon, mixes, rand]).cpu()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / f"grid-epoch{self.epoch:04d}.png"
        tmp = path.with_name(f".{path.name}.tmp.png")
        save_image(grid, str(tmp), nrow=n, padding=1, pad_value=1.0)
        os.replace(tmp, path)

    def write_run_record(self, argv: list[str] | None = None) -> None:
        if not self.dist.main:
            return
        record = {
            "config": self.cfg.to_dict(),
            "argv": redact_argv(argv if argv is not None else sys.argv),
            "store": {
                "url": self.store.url,
                "fingerprint": store_fingerprint(self.store),
                "num_samples": self.store.num_samples,
                "k": self.store.k,
                "dataset": self.store.dataset,
            },
            "generator": {"path": str(self.cfg.generator), "fingerprint": self.g_fingerprint},
            "k": self.k,
            "classifier": json.loads(self.model.net.cfg.to_json()),
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "versions": package_versions(),
            "git_sha": git_sha(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        name = (
            "run.json" if not getattr(self, "_resumed", False) else f"run-resume-{self.step}.json"
        )
        tmp = self.run_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.run_dir / name)

    def open_tensorboard(self) -> None:
        if not self.dist.main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: metrics.jsonl only
            return
        self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step + 1)

    # -- the loop -----------------------------------------------------------------------------

    def min_batches(self) -> int:
        return min(self.stream.num_batches(r) for r in range(self.dist.world_size))

    def train(self, progress: bool = False) -> dict:
        cfg = self.cfg
        self.open_tensorboard()
        loader = self.stream.loader()
        summary: dict = {}
        if not getattr(self, "_resumed", False):
            self.stream.set_epoch(self.epoch)
        try:
            while self.epoch < cfg.epochs:
                if cfg.max_steps is not None and self.step >= cfg.max_steps:
                    break
                summary = self._epoch(loader, progress)
                if not summary["complete"]:  # stopped by max_steps mid-epoch (checkpointed)
                    break
                self.write_grid()
                self.log({"event": "epoch", "epoch": self.epoch, "step": self.step, **summary})
                self.save_checkpoint(epoch_done=True)
                self.epoch += 1
                self.stream.set_epoch(self.epoch)
        finally:
            if self.tb is not None:
                self.tb.close()
        if self.dist.main:
            save_classifier(
                self.model.net,
                self.run_dir / "classifier.pt",
                extra={"method": cfg.method, "step": self.step, "epochs": self.epoch,
                       "generator_fingerprint": self.g_fingerprint, "k": self.k},
            )  # fmt: skip
        return summary

    def _epoch(self, loader, progress: bool) -> dict:
        cfg = self.cfg
        start_in_epoch = self.stream.samples_consumed
        safe = self.min_batches()  # steps every rank reaches: collectives allowed there
        batches_done = sum(-(-c // cfg.batch_size) for c in self.stream.consumed)
        totals = {"loss": 0.0, "acc": 0.0, "n": 0}
        from contextlib import nullcontext

        join = nullcontext()
        if self.ddp is not None:
            from torch.distributed.algorithms.join import Join

            join = Join([self.ddp])
        bar = None
        if progress and self.dist.main:
            from tqdm import tqdm

            bar = tqdm(
                total=self.stream.num_batches(), initial=batches_done, desc=f"epoch {self.epoch}"
            )
        started = time.perf_counter()
        complete = True
        with join:
            for batch in loader:
                t0 = time.perf_counter()
                metrics = self.train_step(batch)
                self.stream.observe(batch)
                self.step += 1
                batches_done += 1
                self.elapsed_s += time.perf_counter() - t0
                n = len(batch["label"])
                totals["loss"] += metrics["loss"] * n
                totals["acc"] += metrics["acc"] * n
                totals["n"] += n
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every == 0:
                    self.log({"event": "train", "epoch": self.epoch, "step": self.step, **metrics})
                at_limit = cfg.max_steps is not None and self.step >= cfg.max_steps
                if (self.step % cfg.checkpoint_every == 0 or at_limit) and batches_done <= safe:
                    self.save_checkpoint(epoch_done=False)
                if at_limit:
                    complete = self.stream.epoch_done()
                    break
        if bar is not None:
            bar.close()
        n = max(totals["n"], 1)
        return {
            "complete": complete,
            "loss": totals["loss"] / n,
            "acc": totals["acc"] / n,
            "samples": self.stream.samples_consumed - start_in_epoch,
            "epoch_s": round(time.perf_counter() - started, 3),
        }
