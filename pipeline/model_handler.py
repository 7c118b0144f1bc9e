"""The Beam ModelHandler that runs Algorithm 1 on a batch of images.

Beam's stock PyTorch handlers run under ``torch.no_grad()`` and expect one forward pass; an
optimisation loop needs its own handler. The loop lives in :class:`Projector`, whose only
public method takes and returns numpy: with ``large_model=True`` Beam keeps the model in one
process per machine and proxies calls to it, and autograd tensors cannot cross that proxy.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from advmix.checkpoints import fine_tuned_from, generator_fingerprint, load_generator
from advmix.errors import AdvmixError
from advmix.inversion import InversionConfig, invert, mean_style
from advmix.perceptual import load_features
from advmix.threads import torch_threads
from pipeline.artifacts import local_copy

log = logging.getLogger("pipeline.encode")
_PROJECTORS: dict[str, Projector] = {}  # this process's projector, by the job that made it


@dataclass(frozen=True)
class ShardWork:
    """One RunInference element: every sample of one shard, inverted by one worker.

    The handler inverts it in consecutive batches of ``batch_size`` samples (the last may be
    short), formed by the job rather than by Beam's batching by arrival: the float results then
    depend only on the shard, so a resumed or re-run job, on any runner, writes the same bytes.
    """

    shard: int
    samples: list[int]
    refs: list  # SampleRef per sample
    images: np.ndarray  # uint8 [N, C, H, W]
    seeds: list[int]
    batch_size: int


def resolve_device(requested: str) -> torch.device:
    """The device asked for, or an error: Beam's own handlers silently fall back to CPU."""
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise AdvmixError(f"--device {requested}: not a device (cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AdvmixError(f"--device {requested} requested but CUDA is not available here")
        if (device.index or 0) >= torch.cuda.device_count():
            raise AdvmixError(
                f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        torch.empty(1, device=device)  # fails now, not mid-batch, if the device is unusable
    return device


class Projector:
    """Generator + feature network on one device, inverting numpy batches."""

    def __init__(
        self,
        generator_url: str,
        features: str,
        cfg: InversionConfig,
        device: str,
        storage_options: dict | None = None,
        encoder_url: str | None = None,
        threads: int | None = None,
    ):
        self.threads = threads
        self.device = resolve_device(device)
        generator_path = local_copy(generator_url, storage_options)
        G = load_generator(generator_path, map_location=self.device)
        self.G = G.eval().requires_grad_(False)
        self.features = load_features(features, device=self.device)
        self.cfg = cfg
        self.encoder = None
        if cfg.init == "encoder":
            self.encoder = load_matching_encoder(local_copy(encoder_url, storage_options), G,
                                                 generator_path, self.device)  # fmt: skip
        else:
            self.w_start = mean_style(self.G, cfg.w_avg_samples, cfg.seed)  # once, not per batch
        self.batches = 0

    def project(self, images: np.ndarray, seeds: Sequence[int]) -> dict[str, np.ndarray]:
        """uint8 [B, C, H, W] -> {"w": [B, L, D] float32, "rec_mse", "rec_psnr", "loss": [B]}."""
        x = torch.from_numpy(np.ascontiguousarray(images)).float() / 127.5 - 1.0
        started = time.perf_counter()
        if self.encoder is not None:  # each image starts from the encoder's prediction
            with torch.no_grad():
                w_start = self.encoder(x.to(self.device))
        else:
            w_start = self.w_start
        with torch_threads(self.threads):
            result = invert(self.G, self.features, x, self.cfg, seeds=seeds, w_start=w_start)
        self.batches += 1
        log.info(
            "inverted %d images x %d steps in %.1fs (batch %d in this process)",
            len(x), self.cfg.steps, time.perf_counter() - started, self.batches,
        )  # fmt: skip
        return {
            "w": result.ws.numpy(),
            "rec_mse": result.rec_mse.numpy(),
            "rec_psnr": result.rec_psnr.numpy(),
            "loss": result.loss.numpy(),
        }


def load_matching_encoder(path: str, G, generator_path: str, device):
    """The amortised encoder at ``path``, refused with one line unless it was trained for
    ``G`` (its recorded generator fingerprint) or for the generator ``G`` was fine-tuned from
    (a start the inversion steps then refine: fine-tuning barely moves the mapping network)."""
    from advmix.encoder import load_encoder

    encoder, info = load_encoder(path, map_location=device)
    fingerprint = generator_fingerprint(G)  # hashes a CPU copy of every tensor
    trained_for = info["generator_fingerprint"]
    if trained_for != fingerprint:
        if trained_for != fine_tuned_from(generator_path):  # reads the file only in this case
            raise AdvmixError(
                f"{path}: this encoder was trained for generator {trained_for[:16]}..., not for "
                f"--generator ({fingerprint[:16]}...)"
            )
        log.info("%s: trained for the generator this one was fine-tuned from", path)
    return encoder.attach(G)  # an iterative encoder decodes with G between its passes


class InversionModelHandler(ModelHandler[ShardWork, dict, Projector]):
    """ShardWork -> PredictionResult(work, {"w": [N, L, D], "rec_mse": [N], ...})."""

    def __init__(
        self,
        generator_path: str,
        features: str,
        cfg: InversionConfig,
        device: str = "cpu",
        large_model: bool = False,
        storage_options: dict | None = None,
        encoder_path: str | None = None,
        threads: int | None = None,
    ):
        # Elements are whole shards (ShardWork), so Beam must not group them further.
        super().__init__(min_batch_size=1, max_batch_size=1, large_model=large_model)
        self._share_across_processes = large_model
        self._args = (generator_path, features, cfg, device, storage_options, encoder_path,
                      threads)  # fmt: skip
        self._job = uuid.uuid4().hex

    def load_model(self) -> Projector:
        # Beam shares a model between the bundles of one DoFn instance; a runner that builds a
        # new instance per task (Dask: one per partition, i.e. per shard) would load the
        # networks again for every shard. One projector per process and job instead (a later
        # job may read other files at the same paths).
        if self._job not in _PROJECTORS:
            _PROJECTORS.clear()  # another job's networks are not needed any more
            _PROJECTORS[self._job] = Projector(*self._args)
        return _PROJECTORS[self._job]

    def run_inference(
        self, batch: Sequence[ShardWork], model: Projector, inference_args=None
    ) -> Iterable[PredictionResult]:
        for work in batch:
            size = work.batch_size
            parts = [
                model.project(work.images[i : i + size], work.seeds[i : i + size])
                for i in range(0, len(work.images), size)
            ]
            yield PredictionResult(
                work, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            )

    def get_metrics_namespace(self) -> str:
        return "advmix_encode"
