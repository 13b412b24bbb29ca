"""Datasets as LightningDataModules: one file per dataset, shared logic in ``base``."""

from lightseg.data.base import (
    Sample,
    SegmentationDataModule,
    SegmentationDataset,
    SegmentationSource,
)

__all__ = ["Sample", "SegmentationDataModule", "SegmentationDataset", "SegmentationSource"]
