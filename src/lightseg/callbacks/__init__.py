"""Lightning callbacks configured in ``configs/callbacks/default.yaml``."""

from lightseg.callbacks.faults import CheckpointOnSignal, RandomStateCheckpoint, StopOnNonFiniteLoss
from lightseg.callbacks.finetune import Finetuning
from lightseg.callbacks.overlays import PredictionOverlays
from lightseg.callbacks.per_image import PerImageResults
from lightseg.callbacks.run_files import LogRunFiles
from lightseg.callbacks.summary import NetworkSummary
