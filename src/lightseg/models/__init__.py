"""The LightningModule and the network contract; one file per family of networks.

``model._target_`` names the network: ``smp_models.build`` (any smp architecture),
``torchvision_models.build`` (FCN, DeepLabV3, LR-ASPP), ``segnet.build``, or your own class.
"""

from lightseg.models.module import SegmentationModule
from lightseg.models.network import build_network, check_network, input_multiple
