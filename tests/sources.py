"""Test-only sources, importable by spawned DDP processes."""

from __future__ import annotations

import os
import time

from lightseg.data import Sample, SegmentationDataModule, SegmentationSource
from lightseg.data.demo import Demo


class CountingDemo(Demo):
    """The demo source, recording each call of ``prepare`` (one line per call) in a file."""

    def prepare(self) -> None:
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with (self.root.parent / "prepare_calls.txt").open("a") as log:
            log.write("prepare\n")
        super().prepare()


class SlowToPrepare(SegmentationSource):
    """Four samples that need no files; ``prepare`` and ``find`` note when they run (with the
    process id) in ``<root>/calls.txt``, and ``prepare`` takes half a second."""

    classes = ("background", "foreground")

    def note(self, what: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "calls.txt").open("a") as log:
            log.write(f"{what} {os.getpid()}\n")

    def prepare(self) -> None:
        self.note("begin")
        time.sleep(0.5)  # long enough for another process to arrive meanwhile
        self.note("end")

    def find(self) -> list[Sample]:
        self.note("find")
        return [Sample(f"s{i}", self.root / f"s{i}.png", stratum=str(i % 2)) for i in range(10)]


def locate_slow_source(root: str, cache_dir: str) -> None:
    """One process of a job: locate the samples of a :class:`SlowToPrepare` source."""
    pipelines = {"train": [], "eval": []}
    SegmentationDataModule(SlowToPrepare(root), pipelines, cache={"dir": cache_dir}).locate()
