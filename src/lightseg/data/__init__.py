"""Datasets as LightningDataModules: the contract a dataset implements in ``source``, the
DataModule in ``module``, one file per dataset."""

from lightseg.data.module import SegmentationDataModule, SegmentationDataset
from lightseg.data.source import Sample, SegmentationSource
