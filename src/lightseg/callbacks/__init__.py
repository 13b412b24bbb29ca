"""Lightning callbacks configured in ``configs/callbacks/default.yaml``."""

from lightseg.callbacks.faults import (
    CheckpointOnSignal,
    RandomStateCheckpoint,
    StopOnNonFiniteLoss,
    TrainingInterrupted,
)
from lightseg.callbacks.overlays import PredictionOverlays
from lightseg.callbacks.per_image import PerImageResults
from lightseg.callbacks.run_files import LogRunFiles

__all__ = [
    "CheckpointOnSignal",
    "LogRunFiles",
    "PerImageResults",
    "PredictionOverlays",
    "RandomStateCheckpoint",
    "StopOnNonFiniteLoss",
    "TrainingInterrupted",
]
