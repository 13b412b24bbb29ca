"""Test-only sources, importable by spawned DDP processes."""

from __future__ import annotations

from lightseg.data.demo import Demo


class CountingDemo(Demo):
    """The demo source, recording each call of ``prepare`` (one line per call) in a file."""

    def prepare(self) -> None:
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with (self.root.parent / "prepare_calls.txt").open("a") as log:
            log.write("prepare\n")
        super().prepare()
