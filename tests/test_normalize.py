"""uint8 from the loaders, normalisation once on the device, shared by training and inference."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from lightseg.data.transforms import Normalize, build_pipeline
from lightseg.errors import LightsegError, user_message
from lightseg.models import SegmentationModule
from lightseg.tools.inference import Segmenter
from tests.conftest import BINARY_METRICS, CE_DICE, make_config

MEAN, STD = [0.5, 0.25, 0.0], [0.5, 0.25, 1.0]


def test_normalize_scales_uint8_and_takes_floats_in_0_to_1():
    normalize = Normalize(MEAN, STD)
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    expected = [[[[-1.0]], [[-0.2]], [[1.0]]]]  # (0 - .5) / .5, (.2 - .25) / .25, (1 - 0) / 1
    assert torch.allclose(normalize(pixels), torch.tensor(expected))
    assert torch.allclose(normalize(pixels.float() / 255), torch.tensor(expected))
    assert normalize(pixels).dtype == torch.float32
    assert normalize.state_dict() == {}  # mean and std live in the checkpoint's hyperparameters


def test_clip_clamps_values_beyond_the_percentiles_that_mean_and_std_map_to_one(tmp_path):
    low, high = 1000 / 65535, 3000 / 65535  # robust scaling of 16-bit: mean/std from them
    normalize = Normalize([(low + high) / 2], [(high - low) / 2], clip=1.0)
    pixels = torch.tensor([0.0, low, 2000 / 65535, high, 5000 / 65535]).view(5, 1, 1, 1)
    expected = torch.tensor([-1.0, -1.0, 0.0, 1.0, 1.0])  # 5000 would be 3.0 unclipped
    assert torch.allclose(normalize(pixels).flatten(), expected, atol=1e-5)
    assert Normalize([(low + high) / 2], [(high - low) / 2])(pixels)[-1].item() == pytest.approx(3)
    with pytest.raises(Exception) as refused:  # Hydra wraps it
        instantiate(make_config(tmp_path, "data.clip=-1").data, _convert_="all")
    assert "data.clip=-1 must be a number > 0" in user_message(refused.value)


def module() -> SegmentationModule:
    return SegmentationModule(
        model={"_target_": "lightseg.models.segnet.build", "encoder_weights": None},
        loss=CE_DICE,
        metrics=BINARY_METRICS,
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
        classes=["background", "lesion"],
        normalization={"mean": MEAN, "std": STD},
    )


def test_batches_are_normalised_and_widened_after_the_transfer():
    seg = module()
    image = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    mask = torch.randint(0, 2, (2, 32, 32), dtype=torch.uint8)
    batch = seg.on_after_batch_transfer({"image": image, "mask": mask, "id": ["a", "b"]}, 0)
    assert torch.allclose(batch["image"], Normalize(MEAN, STD)(image))
    assert batch["mask"].dtype == torch.long and torch.equal(batch["mask"], mask.long())
    assert batch["id"] == ["a", "b"]


def test_inference_normalises_as_training_did():
    seg = module().eval()
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    assert torch.equal(Segmenter(seg).normalize(image), seg.normalize(tensor))


def test_normalisation_listed_in_the_transforms_is_refused():
    with pytest.raises(LightsegError, match=r"data\.transforms lists Normalize"):
        build_pipeline([A.HorizontalFlip(), A.Normalize()])


def test_the_refusal_reaches_a_config_user(tmp_path):
    cfg = make_config(
        tmp_path, "data.transforms.eval=[{_target_:albumentations.Normalize}]", data_dir=tmp_path
    )
    with pytest.raises(Exception) as error:
        instantiate(cfg.data, _convert_="all")
    assert "Remove it from data.transforms" in user_message(error.value)
