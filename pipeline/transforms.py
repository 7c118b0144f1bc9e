"""The encode pipeline's steps: each shard is read, inverted and written by one worker.

    Create(shard plans) -> ReadShardInputs -> Invert -> WriteShard

A ``ShardPlan`` names every input of its shard, decided by the launcher from the listing and
the screening, so no step groups anything: whichever worker takes a plan writes the whole
shard, and a runner that splits or repeats work (a retry, a lost worker) writes the same bytes.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from advmix.errors import AdvmixError
from pipeline.model_handler import ShardWork
from pipeline.sources import Rejected, SampleRef, decode
from schemas.writer import StoreWriter

NAMESPACE = "advmix_encode"
log = logging.getLogger("pipeline.encode")


def sample_seed(sample_id: str) -> int:
    """Seed of a sample's mixing noise, from its id: the same whatever its batch or position."""
    return int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:7], "big")


@dataclass(frozen=True)
class ShardPlan:
    shard: int
    start: int  # the shard's first sample
    refs: list[SampleRef]


def plan_shards(
    refs: list[SampleRef], accepted: list[int], shard_size: int, completed: set[int]
) -> list[ShardPlan]:
    """Shards of the accepted inputs in listing order; those an earlier run completed are left
    out (resume)."""
    by_position = {ref.position: ref for ref in refs}
    plans = []
    for shard, start in enumerate(range(0, len(accepted), shard_size)):
        if shard not in completed:
            members = [by_position[p] for p in accepted[start : start + shard_size]]
            plans.append(ShardPlan(shard, start, members))
    return plans


class ReadShardInputsFn(beam.DoFn):
    """ShardPlan -> ShardWork: its images decoded, in sample order."""

    def __init__(self, decode_args: tuple, batch_size: int):
        self.decode_args, self.batch_size = decode_args, batch_size

    def process(self, plan: ShardPlan):
        images = []
        for ref in plan.refs:
            try:
                images.append(decode(ref, *self.decode_args))
            except Rejected as exc:
                raise AdvmixError(
                    f"input {ref.id} changed while the job ran (accepted when screened, now: "
                    f"{exc}); rerun the same command"
                ) from None
        yield ShardWork(
            shard=plan.shard,
            samples=list(range(plan.start, plan.start + len(plan.refs))),
            refs=plan.refs,
            images=np.stack(images),
            seeds=[sample_seed(ref.id) for ref in plan.refs],
            batch_size=self.batch_size,
        )


class WriteShardFn(beam.DoFn):
    """PredictionResult(ShardWork, outputs) -> shard number, after a whole-shard write."""

    def __init__(self, url: str, storage_options: dict, split: str | None, store_images: bool):
        self.url, self.storage_options = url, storage_options
        self.split, self.store_images = split, store_images
        self.written = Metrics.counter(NAMESPACE, "shards_written")
        self.encoded = Metrics.counter(NAMESPACE, "images_encoded")
        self.psnr = Metrics.distribution(NAMESPACE, "rec_psnr_centi_db")

    def process(self, result):
        work, out = result.example, result.inference
        refs = work.refs
        writer = StoreWriter.open(self.url, self.storage_options)
        attributes = None
        if writer.layout.attribute_names:
            attributes = np.array([ref.attributes for ref in refs], dtype=np.int8)
        writer.write_shard(
            work.shard,
            w=out["w"],
            labels=np.array([ref.label for ref in refs], dtype=np.int64),
            images=work.images if self.store_images else None,
            attributes=attributes,
            rows={
                "id": [ref.id for ref in refs],
                "source": [ref.uri for ref in refs],
                "split": [self.split] * len(refs),
                "rec_mse": out["rec_mse"],
                "rec_psnr": out["rec_psnr"],
            },
        )
        self.written.inc()
        self.encoded.inc(len(refs))
        for value in out["rec_psnr"]:
            self.psnr.update(int(round(float(value) * 100)))
        log.info(
            "shard %d of %d written: %d images, mean PSNR %.2f dB",
            work.shard + 1, writer.num_shards, len(refs), out["rec_psnr"].mean(),
        )  # fmt: skip
        yield work.shard
