"""Which Beam runner runs the encode job, with what options, and on which Dask cluster.

Beam resolves short runner names only for the runners its options list (``FnApiRunner``,
``DataflowRunner``, ...); ``DaskRunner`` lives outside that list, so its short name is
resolved here. Beam knows the ``--dask_*`` flags only once ``DaskOptions`` (in the Dask
runner's module) is imported, which Beam itself does only when it builds the runner: a parse
before that logs "Discarding unparseable args" for them. The module is imported here before
any parse, so the flags parse as what they are and reach ``distributed.Client``.

On Dask, every pipeline of the job gets one partition per element of its ``Create`` (one per
shard), so the shards spread over the cluster's workers; ``--dask_npartitions`` or
``--dask_partition_size`` given by the user win. Without ``--dask_client_address`` the job
starts one local cluster of worker processes for all its pipelines and closes it at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from advmix.errors import AdvmixError
from schemas.errors import StoreError
from schemas.urls import one_line

log = logging.getLogger("pipeline.encode")
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
SHORT_NAMES = {"dask": DASK_RUNNER, "daskrunner": DASK_RUNNER}
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")


class EncodeFailed(AdvmixError):
    """A pipeline of the job stopped; rerunning the same command resumes the store."""


class Engine:
    """The runner flags of one job and, on Dask, the cluster its pipelines share."""

    def __init__(self, beam_args: list[str]) -> None:
        self.args = self._resolve(list(beam_args))
        self.runner = PipelineOptions(self.args).get_all_options()["runner"]
        self.cluster = None

    @staticmethod
    def _resolve(args: list[str]) -> list[str]:
        runner = None
        for i, arg in enumerate(args):
            if arg == "--runner" and i + 1 < len(args):
                runner, at, form = args[i + 1], i + 1, "{}"
            elif arg.startswith("--runner="):
                runner, at, form = arg.split("=", 1)[1], i, "--runner={}"
        if runner is None:
            return ["--runner=FnApiRunner", *args]
        full = SHORT_NAMES.get(runner.lower(), runner)
        args[at] = form.format(full)
        if full == DASK_RUNNER:
            dask_options()  # registers --dask_* with Beam's option parser
        return args

    @property
    def is_dask(self) -> bool:
        return self.runner == DASK_RUNNER

    @property
    def runs_here(self) -> bool:
        """Whether the workers run on this machine (the local runners), so its devices matter."""
        return self.runner.rsplit(".", 1)[-1] in LOCAL_RUNNERS

    def _has(self, flag: str) -> bool:
        return any(arg == flag or arg.startswith(flag + "=") for arg in self.args)

    def options(self, num_elements: int) -> PipelineOptions:
        """Options of a pipeline whose ``Create`` holds ``num_elements`` independent items."""
        args = list(self.args)
        if self.is_dask:
            if not self._has("--dask_npartitions") and not self._has("--dask_partition_size"):
                args.append(f"--dask_npartitions={max(1, num_elements)}")
            if not self._has("--dask_client_address") and self.cluster is not None:
                args.append(f"--dask_client_address={self.cluster.scheduler_address}")
        return PipelineOptions(args)

    @contextlib.contextmanager
    def session(self):
        """Where the job runs: on Dask without an address, a local cluster of processes."""
        if not (self.is_dask and not self._has("--dask_client_address")):
            yield self
            return
        from distributed import LocalCluster

        workers = max(1, min(os.cpu_count() or 1, 8))
        log.info("starting a local Dask cluster of %d worker processes", workers)
        # Starting workers sets OMP_NUM_THREADS=1 and the like in this process's environment
        # for good; the caller's process (a notebook, a test run) gets its own back.
        environ = dict(os.environ)
        try:
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address="127.0.0.1:0") as cluster:  # fmt: skip
                self.cluster = cluster
                yield self
        finally:
            self.cluster = None
            os.environ.clear()
            os.environ.update(environ)

    def run(self, name: str, pipeline: beam.Pipeline) -> None:
        """Run ``pipeline`` to the end; a failure is one line that says how to go on."""
        try:
            result = pipeline.run()
            try:
                result.wait_until_finish()
            finally:
                client = getattr(result, "client", None)  # the Dask client Beam opened
                if client is not None:
                    client.close()
        except (AdvmixError, StoreError, ValueError):
            raise
        except Exception as exc:  # a lost worker, a refused connection: one line, not a trace
            raise EncodeFailed(
                f"the {name} pipeline stopped ({type(exc).__name__}: {one_line(exc)}); "
                "rerun the same command to resume the store"
            ) from None


def dask_options():
    try:
        import distributed  # noqa: F401
        from apache_beam.runners.dask.dask_runner import DaskOptions
    except ImportError:
        raise AdvmixError(
            "--runner=DaskRunner needs dask.distributed: pip install 'advmix[dask]'"
        ) from None
    return DaskOptions
