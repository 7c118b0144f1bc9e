"""Screening: which listed inputs can be encoded, decided before any shard is planned.

A store's samples are the accepted inputs in listing order, so shards can be planned only once
every input has been decoded once. The job's first pipeline does that, with no grouping at all:

    Create(listing chunks) -> Screen

Each chunk of ``CHUNK`` consecutive inputs is decoded by one worker, which writes the chunk's
rejected inputs as its own dead-letter part and a record of the positions it accepted under
``screen/``. The launcher then reads the records of every chunk (``accepted_positions``) and
names any that is missing. Rewriting a record or a part replaces it, so retries are harmless.

A dataset spec's images are already in the launcher's memory (listing them built them), so the
launcher screens those itself (``SCREENED_HERE``), with the same step and the same records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.sources import Rejected, SampleRef, decode
from schemas.errors import StoreError
from schemas.layout import dead_letter_part_path, screen_record_path
from schemas.urls import Location
from schemas.writer import write_dead_letter_part

NAMESPACE = "advmix_encode"
CHUNK = 512  # inputs per screening task: a few seconds of decoding, few records to read back
SCREENED_HERE = ("spec",)  # listing kinds whose images the launcher holds already


@dataclass(frozen=True)
class Chunk:
    index: int
    refs: list[SampleRef]


def chunks(refs: list[SampleRef]) -> list[Chunk]:
    return [Chunk(i, refs[start : start + CHUNK])
            for i, start in enumerate(range(0, len(refs), CHUNK))]  # fmt: skip


def part_name(chunk: int) -> str:
    return f"screen-{chunk:05d}"


class ScreenFn(beam.DoFn):
    """Chunk -> chunk number, after writing its record and its dead letters."""

    def __init__(self, location: Location, decode_args: tuple):
        self.location, self.decode_args = location, decode_args
        self.read = Metrics.counter(NAMESPACE, "images_read")
        self.rejected = Metrics.counter(NAMESPACE, "images_rejected")

    def process(self, chunk: Chunk):
        accepted, dead = [], []
        for ref in chunk.refs:
            self.read.inc()
            try:
                decode(ref, *self.decode_args)
            except Rejected as exc:
                self.rejected.inc()
                dead.append({"id": ref.id, "source": ref.uri, "reason": str(exc)})
                continue
            accepted.append(ref.position)
        if dead:
            write_dead_letter_part(self.location, part_name(chunk.index), dead)
        else:  # a part left by an earlier run, when these inputs were rejected then
            self.location.delete(dead_letter_part_path(part_name(chunk.index)))
        record = {"chunk": chunk.index, "first": chunk.refs[0].position,
                  "count": len(chunk.refs), "accepted": accepted}  # fmt: skip
        self.location.write(screen_record_path(chunk.index), json.dumps(record).encode())
        yield chunk.index


def screen_here(location: Location, decode_args: tuple, planned: list[Chunk]) -> None:
    step = ScreenFn(location, decode_args)
    for chunk in planned:
        for _ in step.process(chunk):
            pass


def accepted_positions(location: Location, planned: list[Chunk]) -> list[int]:
    """The listing positions that screening accepted, sorted; one line naming the chunks that
    left no record (their pipeline stopped before them)."""
    positions, missing = [], []
    for chunk in planned:
        try:
            record = json.loads(location.read(screen_record_path(chunk.index)))
            if (record["first"], record["count"]) != (chunk.refs[0].position, len(chunk.refs)):
                raise ValueError("another listing")
        except (FileNotFoundError, KeyError, TypeError, ValueError):
            missing.append(chunk.index)
            continue
        positions += record["accepted"]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise StoreError(
            f"{location.display}: {len(missing)} of {len(planned)} input chunks were not "
            f"screened ({shown}); rerun the same command to resume"
        )
    return sorted(positions)


def clear_records(location: Location, planned: list[Chunk]) -> None:
    """Screening records are the job's scratch: a committed store does not keep them."""
    for chunk in planned:
        location.delete(screen_record_path(chunk.index))
