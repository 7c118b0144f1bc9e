"""Stage 2: train a classifier on a latent store with nominal, AT, RandMix, AdvMix or mixup.

One ``Trainer`` runs on CPU or CUDA, alone or as one rank of ``torchrun`` (DDP: gloo on CPU,
nccl on GPUs). Inputs of the classifier are images in ``[0, 1]``: the store's source images
(nominal examples; decoded from ``w`` when the store has none) and what the method makes of
them (``training.methods``).

Reproducibility: the model is initialised from ``seed``; every random draw of a step (mixing
latents, PGD starts, mixup pairs) comes from a ``torch.Generator`` seeded by
``(seed, rank, step)``; the data order is the stream's (seed + epoch). ``--resume`` continues
at the next unseen sample from the last checkpoint (``training.runfiles``), so an interrupted
run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from advmix import attacks
from advmix.checkpoints import generator_fingerprint, load_generator
from advmix.classifiers import make_classifier, save_classifier
from advmix.errors import AdvmixError
from advmix.projections import fit_style_set
from advmix.stylegan import resolve_k, to_unit
from training import runfiles
from training.config import LR_SCHEDULES, TrainConfig
from training.distributed import init_distributed
from training.methods import METHODS, MethodContext, env_column
from training.targets import resolve_targets


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + rank * 7_919 + step) % (2**63 - 1))


def images_to_unit(images: Tensor) -> Tensor:
    return images.to(torch.float32) / 255.0


def load_eval_sets(specs: tuple[str, ...]) -> dict:
    """{spec: ImageSet} of --eval-data, loaded once (a bad spec fails before any step)."""
    from advmix.datasets import load

    return {spec: load(spec) for spec in specs}


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
        self.k = resolve_k(self.G, cfg.k, self.store.k)
        self.stream = LatentStream(
            self.store, batch_size=cfg.batch_size, seed=cfg.seed, buffer_size=cfg.buffer_size,
            rank=self.dist.rank, world_size=self.dist.world_size, num_workers=cfg.workers,
        )  # fmt: skip
        self.batches_per_epoch = max(self.stream.num_batches(), 1)  # every epoch the same
        self.targets = resolve_targets(cfg.target, self.store)
        torch.manual_seed(cfg.seed)
        self.model = make_classifier(
            self.targets.num_outputs, cfg.width, cfg.grayscale, cfg.arch, cfg.input_size,
            list(self.targets.names) or None,
        ).to(self.device)  # fmt: skip
        if cfg.arch_weights:
            self.model.load_backbone(cfg.arch_weights)
        self.opt = torch.optim.Adam(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        # The valid fine-style set: AdvMix's projection, also used by every method's grids.
        style_set = fit_style_set(self.G, self.k, cfg.attack, seed=cfg.seed).to(self.device)
        self.method = MethodContext(self.model, self.G, self.k, style_set, cfg,
                                    self.targets.objective)  # fmt: skip
        self.make_batch = METHODS[cfg.method]
        self.env_column = env_column(cfg.method, self.store)
        self.ddp = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.model, device_ids=ids)
        self.eval_sets = load_eval_sets(cfg.eval_data)
        self.step = 0
        self.epoch = 0
        self.elapsed_s = 0.0
        self.resumed = False
        self.tb = None

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
        runfiles.write_checkpoint({
            "config": json.dumps(self.cfg.to_dict(), sort_keys=True),
            "classifier_config": self.model.cfg.to_json(),
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "rng": runfiles.rng_state(),
            "stream": [r["stream"] for r in ranks],
            "rank_steps": [r["step"] for r in ranks],
            "epoch": self.epoch,
            "epoch_done": epoch_done,
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "generator_fingerprint": self.g_fingerprint,
            "k": self.k,
        }, self.checkpoint_path)  # fmt: skip

    def load_checkpoint(self) -> None:
        data = runfiles.read_checkpoint(self.checkpoint_path)
        runfiles.check_resumable(data, self.cfg, self.g_fingerprint, self.dist.world_size,
                                 self.run_dir)  # fmt: skip
        self.model.load_state_dict(runfiles.model_weights(data))
        self.opt.load_state_dict(data["optimizer"])
        runfiles.set_rng_state(data["rng"])
        self.step = int(data["rank_steps"][self.dist.rank])
        self.elapsed_s = float(data["elapsed_s"])
        if data["epoch_done"]:
            self.epoch = int(data["epoch"]) + 1
            self.stream.set_epoch(self.epoch)
        else:
            self.stream.load_state_dict(data["stream"][self.dist.rank])
            self.epoch = self.stream.epoch
        self.resumed = True
        if self.dist.main:
            runfiles.trim_metrics(self.metrics_path, self.step)

    # -- one step -----------------------------------------------------------------------------

    def nominal_images(self, batch: dict) -> Tensor:
        if "image" in batch:
            return images_to_unit(batch["image"].to(self.device))
        with torch.no_grad():
            return to_unit(self.G.synthesis(batch["w"].to(self.device)))

    def train_step(self, batch: dict) -> dict:
        gen = step_generator(self.cfg.seed, self.dist.rank, self.step)
        x = self.nominal_images(batch)
        y = self.targets.of(batch).to(self.device)
        w = batch["w"].to(self.device)
        net = self.ddp if self.ddp is not None else self.model
        self.model.train()
        self.method.step = self.step
        if self.env_column is not None:
            self.method.env = batch["attributes"][:, self.env_column].long().to(self.device)
        made = self.make_batch(self.method, x, w, y, gen)
        logits = net(made.inputs)
        loss, acc = made.loss(logits), made.accuracy(logits)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        lr = self.cfg.lr * LR_SCHEDULES[self.cfg.lr_schedule](self.run_progress())
        for group in self.opt.param_groups:
            group["lr"] = lr
        try:
            self.opt.step()
        except RuntimeError as exc:  # an update too large for float32 (a huge --lr)
            if "overflow" not in str(exc):
                raise
            self.diverged(loss.item(), "the optimiser's update overflows float32")
        metrics = {"loss": loss.item(), "acc": acc.item(), "lr": lr, **made.info}
        finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
        if not bool(finite):  # on the weights, which DDP keeps equal: every rank stops here
            self.diverged(metrics["loss"], "the weights are no longer finite")
        return metrics

    def run_progress(self) -> float:
        """Share of the run's steps done before this one: the schedule's clock, a function of the
        step alone, so a resumed run takes the same learning rates as an uninterrupted one."""
        return min(1.0, self.step / (self.cfg.epochs * self.batches_per_epoch))

    def diverged(self, loss: float, why: str):
        """Stop with one line, before anything of the diverged run is saved."""
        raise AdvmixError(
            f"training diverged at step {self.step + 1} (epoch {self.epoch}): the loss is "
            f"{loss:.4g} and {why}; lower --lr. Nothing from this point on was saved"
        )

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

    def score(self) -> None:
        """Accuracy on each --eval-data set, logged with the training seconds so far (scoring
        time not included), so runs of different methods compare at equal compute."""
        if not self.eval_sets or not self.dist.main:
            return
        from training.evaluate import accuracy

        model = self.model.for_inference()  # a copy: the model in training is left as it is
        scores = {spec: accuracy(model, data.images, data.labels, 256, self.device)
                  for spec, data in self.eval_sets.items()}  # fmt: skip
        self.log({"event": "eval", "epoch": self.epoch, "step": self.step,
                  "train_s": round(self.elapsed_s, 3), "accuracy": scores})  # fmt: skip

    def write_grid(self) -> None:
        """Nominal images (top), the generator's reconstructions G(w), AdvMix mixes against the
        current model, and RandMix mixes (bottom) of the first samples of shard 0."""
        if not self.dist.main:
            return
        from torchvision.utils import save_image

        data = self.store.read_arrays(0)
        n = min(8, len(data["label"]))
        w = torch.from_numpy(np.asarray(data["w"][:n], dtype=np.float32)).to(self.device)
        first = {name: torch.from_numpy(np.asarray(v[:n])) for name, v in data.items()}
        y = self.targets.of(first).to(self.device)
        gen = torch.Generator().manual_seed(self.cfg.seed + 10_007 * (self.epoch + 1))
        with torch.no_grad():
            recon = to_unit(self.G.synthesis(w))
            nominal = (
                images_to_unit(torch.from_numpy(np.asarray(data["image"][:n])).to(self.device))
                if "image" in data
                else recon
            )
        mixes = attacks.advmix(self.model, self.G, w, y, self.k, self.method.style_set,
                               self.cfg.attack, gen, self.targets.objective).images  # fmt: skip
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
            "argv": runfiles.redact_argv(argv if argv is not None else sys.argv),
            "store": {
                "url": self.store.url,
                "fingerprint": runfiles.store_fingerprint(self.store),
                "num_samples": self.store.num_samples,
                "k": self.store.k,
                "dataset": self.store.dataset,
            },
            "generator": {"path": str(self.cfg.generator), "fingerprint": self.g_fingerprint},
            "k": self.k,
            "targets": self.targets.labels,
            "classifier": json.loads(self.model.cfg.to_json()),
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "versions": runfiles.package_versions(),
            "git_sha": runfiles.git_sha(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        name = f"run-resume-{self.step}.json" if self.resumed else "run.json"
        runfiles.write_json_atomic(self.run_dir / name, record)

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
        if not self.resumed:
            self.stream.set_epoch(self.epoch)
        try:
            while self.epoch < cfg.epochs:
                if cfg.max_steps is not None and self.step >= cfg.max_steps:
                    break
                summary = self.run_epoch(loader, progress)
                if not summary["complete"]:  # stopped by max_steps mid-epoch (checkpointed)
                    break
                if cfg.eval_every is None or self.step % cfg.eval_every:  # else scored already
                    self.score()
                self.write_grid()
                self.log({"event": "epoch", "epoch": self.epoch, "step": self.step,
                          "train_s": round(self.elapsed_s, 3), **summary})  # fmt: skip
                self.save_checkpoint(epoch_done=True)
                self.epoch += 1
                self.stream.set_epoch(self.epoch)
        finally:
            if self.tb is not None:
                self.tb.close()
        if self.dist.main:
            save_classifier(
                self.model,
                self.run_dir / "classifier.pt",
                extra={"method": cfg.method, "step": self.step, "epochs": self.epoch,
                       "generator_fingerprint": self.g_fingerprint, "k": self.k},
            )  # fmt: skip
        return summary

    def run_epoch(self, loader, progress: bool) -> dict:
        cfg = self.cfg
        start_in_epoch = self.stream.samples_consumed
        safe = self.min_batches()  # steps every rank reaches: collectives allowed there
        batches_done = sum(-(-c // cfg.batch_size) for c in self.stream.consumed)
        totals = {"loss": 0.0, "acc": 0.0, "n": 0}
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
                if cfg.eval_every is not None and self.step % cfg.eval_every == 0:
                    self.score()  # before the checkpoint: a resume redoes a lost score
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
