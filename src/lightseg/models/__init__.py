"""The LightningModule and the network factory."""

from lightseg.models.factory import build_model
from lightseg.models.module import SegmentationModule

__all__ = ["SegmentationModule", "build_model"]
