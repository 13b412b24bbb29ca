"""Contract checks for a fork's network, loss term, metric and dataset, as pytest classes.

A fork's test file names its class in one line and inherits every check lightseg relies on
(README, "Extending lightseg"):

    from lightseg.testing import NetworkContract

    class TestTinyNet(NetworkContract):
        network = {"_target_": "extensions.tiny_net.TinyNet", "width": 8}

Each contract builds the extension the way training does (the same builders), so a class that
passes here trains, evaluates and exports in lightseg.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from hydra.utils import get_object, instantiate

from lightseg.data.source import SegmentationSource, read_pair
from lightseg.losses import build_loss
from lightseg.metrics import build_metrics, metric_values
from lightseg.models.network import build_network, check_network, logits_of, takes
from lightseg.task import IGNORE_INDEX, Task

BINARY, MULTICLASS = Task(("background", "object")), Task(("background", "a", "b", "c"))
TASKS = pytest.mark.parametrize("task", [BINARY, MULTICLASS], ids=["binary", "multiclass"])


def labelled_batch(task: Task, size: tuple[int, int] = (16, 20), seed: int = 0):
    """Random logits ``[2, C, H, W]`` and labels ``[2, H, W]`` with a band of ignored (255)
    pixels, and the mask of those pixels."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, task.out_channels, *size, generator=generator)
    target = torch.randint(0, task.num_classes, (2, *size), generator=generator)
    ignored = torch.zeros_like(target, dtype=torch.bool)
    ignored[:, size[0] // 2, :] = True
    ignored[1, :, -3:] = True
    return logits, target.masked_fill(ignored, IGNORE_INDEX), ignored


class NetworkContract:
    """``network``: the model config node (``_target_`` and keys, as configs/model/*.yaml)."""

    network: ClassVar[dict[str, Any]]
    image_size: ClassVar[tuple[int, int]] = (64, 64)

    def build(self, out_channels: int, in_channels: int = 3) -> torch.nn.Module:
        config = dict(self.network)
        if takes(config["_target_"], "in_channels"):
            config["in_channels"] = in_channels
        return build_network(config, out_channels)

    @pytest.mark.parametrize("out_channels", [1, 4])
    def test_logits_at_the_input_size_for_each_task(self, out_channels):
        check_network(self.network, out_channels, 3, self.image_size)  # what training checks

    @pytest.mark.parametrize("in_channels", [1, 4])
    def test_other_channel_counts_where_it_takes_in_channels(self, in_channels):
        if not takes(self.network["_target_"], "in_channels"):
            pytest.skip("the network has no in_channels argument: RGB only")
        check_network({**self.network, "in_channels": in_channels}, 2, in_channels, self.image_size)

    def test_a_training_step_reaches_every_trainable_parameter(self):
        torch.manual_seed(0)
        network = self.build(2).train()
        logits_of(network(torch.randn(2, 3, *self.image_size))).square().mean().backward()
        trainable = [(n, p) for n, p in network.named_parameters() if p.requires_grad]
        assert trainable, "no trainable parameters"
        missing = [n for n, p in trainable if p.grad is None]
        assert not missing, f"parameters outside the logits' graph: {missing[:5]}"
        assert all(torch.isfinite(p.grad).all() for _, p in trainable)

    def test_weights_only_checkpoint_round_trip_and_torchscript_export(self, tmp_path):
        torch.manual_seed(0)
        network = self.build(2).eval()
        images = torch.randn(1, 3, *self.image_size)
        with torch.no_grad():
            expected = logits_of(network(images))
        torch.save(network.state_dict(), tmp_path / "weights.pt")
        restored = self.build(2).eval()
        restored.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
        traced = torch.jit.trace(restored, images, strict=False)  # make export's first step
        with torch.no_grad():
            assert torch.allclose(logits_of(restored(images)), expected, atol=1e-6)
            assert torch.allclose(logits_of(traced(images)), expected, atol=1e-5)


class LossTermContract:
    """``term``: the term's node (``loss.<name>.term``: ``_target_`` and its options)."""

    term: ClassVar[dict[str, Any]]

    def build(self, task: Task) -> torch.nn.Module:
        return build_loss({"term": {"weight": 1.0, "term": dict(self.term)}}, task).terms["term"]

    @TASKS
    def test_a_finite_scalar_with_finite_gradients(self, task):
        logits, target, _ = labelled_batch(task)
        logits.requires_grad_(True)
        value = self.build(task)(logits, target)
        assert value.dim() == 0 and torch.isfinite(value)
        value.backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0

    @TASKS
    def test_ignored_pixels_do_not_count(self, task):
        logits, target, ignored = labelled_batch(task)
        changed = torch.where(ignored.unsqueeze(1), torch.randn_like(logits) * 10, logits)
        term = self.build(task)
        assert torch.allclose(term(changed, target), term(logits, target), rtol=1e-5, atol=1e-6)


class MetricContract:
    """``metric``: the metric's node (``metrics.<name>``: ``_target_`` and its options)."""

    metric: ClassVar[dict[str, Any]]
    tasks: ClassVar[tuple[Task, ...]] = (BINARY, MULTICLASS)

    def value(self, task: Task, *batches: tuple[torch.Tensor, torch.Tensor]) -> dict:
        metrics = build_metrics({"metric": copy.deepcopy(self.metric)}, task)
        for preds, target in batches:
            metrics.update(preds, target)
        return metric_values(metrics, task)

    def cases(self):
        for task in self.tasks:
            logits, target, ignored = labelled_batch(task)
            yield task, task.predict(logits), target, ignored

    def test_finite_values_and_ignored_pixels_do_not_count(self):
        for task, preds, target, ignored in self.cases():
            values = self.value(task, (preds, target))
            assert values and all(np.isfinite(v) for v in values.values()), values
            other = preds.masked_fill(ignored, task.num_classes - 1)
            assert self.value(task, (other, target)) == pytest.approx(values)

    def test_a_perfect_prediction_scores_better_than_all_background(self):
        for task, _, target, _ in self.cases():
            better = getattr(get_object(self.metric["_target_"]), "higher_is_better", None)
            if better is None:
                pytest.skip("the metric does not say whether higher is better")
            truth = target.masked_fill(target == IGNORE_INDEX, 0)
            perfect = self.value(task, (truth, target))
            wrong = self.value(task, (torch.zeros_like(truth), target))
            sign = 1 if better else -1
            assert all(sign * (perfect[k] - wrong[k]) >= 0 for k in perfect), (perfect, wrong)
            assert any(sign * (perfect[k] - wrong[k]) > 0 for k in perfect), (perfect, wrong)

    def test_batches_add_up_as_across_processes(self):
        """Two batches give the value of both at once: the states reduce, as DDP needs."""
        for task, preds, target, _ in self.cases():
            whole = self.value(task, (preds, target))
            split = self.value(task, (preds[:1], target[:1]), (preds[1:], target[1:]))
            assert split == pytest.approx(whole, rel=1e-5)


class SourceContract:
    """``source``: the dataset's node (``data.source``: ``_target_``, ``root``, options); or
    override :meth:`make_source` (e.g. to write a small copy of the data under ``tmp_path``)."""

    source: ClassVar[dict[str, Any]]
    samples_read: ClassVar[int] = 4

    def make_source(self, tmp_path) -> SegmentationSource:
        return instantiate(self.source, _convert_="all")

    def test_find_and_read_give_the_documented_pairs(self, tmp_path):
        source = self.make_source(tmp_path)
        assert len(source.classes) >= 2, "classes: background first, then the others"
        source.prepare()
        samples = source.find()
        assert samples and len({s.id for s in samples}) == len(samples), "ids must be unique"
        for sample in samples[: self.samples_read]:
            image, mask = read_pair(source, sample)
            assert image.dtype == np.uint8 and mask.dtype == np.uint8, sample.id
            assert image.shape[:2] == mask.shape and mask.ndim == 2, sample.id
            assert (image.shape[2] if image.ndim == 3 else 1) == source.in_channels, sample.id
            labels = set(np.unique(mask).tolist()) - {IGNORE_INDEX}
            assert labels <= set(range(len(source.classes))), f"{sample.id}: labels {labels}"

    def test_splits_are_disjoint_and_repeatable(self, tmp_path):
        source = self.make_source(tmp_path)
        source.prepare()
        samples = source.find()
        splits = [source.split(samples, {"val": 0.25, "test": 0.25}, seed=0) for _ in range(2)]
        ids, again = ({name: [s.id for s in part] for name, part in x.items()} for x in splits)
        assert ids == again
        seen = [i for part in ids.values() for i in part]
        assert len(seen) == len(set(seen)) == len(samples)
