"""Pixel calibration (ECE, Brier) and temperature scaling: `make calibrate`, and eval, export and
ensembles applying the stored temperature."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from scipy.optimize import minimize_scalar
from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

from lightseg import CONFIG_DIR
from lightseg.checkpoints import calibration_path, load_module, write_calibration
from lightseg.errors import LightsegError
from lightseg.metrics import PixelCalibration
from lightseg.task import Task
from lightseg.tools.calibrate import calibrate, fit_temperature, main
from lightseg.tools.eval import evaluate
from lightseg.tools.export import export
from lightseg.tools.inference import Segmenter, load_segmenter
from lightseg.tools.predict import predict
from tests.runs import run_app
from tests.test_eval import eval_config
from tests.test_export import export_config, reference_logits
from tests.test_predict import predict_config

# --- the metric -----------------------------------------------------------------------------


def test_ece_and_brier_by_hand_multiclass():
    # 5 bins: [0, .2) [.2, .4) [.4, .6) [.6, .8) [.8, 1]; the fifth pixel is ignored
    probabilities = torch.tensor(
        [[0.7, 0.2, 0.1], [0.1, 0.65, 0.25], [0.25, 0.3, 0.45], [0.05, 0.05, 0.9], [1, 0, 0]]
    ).T.reshape(1, 3, 1, 5)
    target = torch.tensor([[[0, 2, 2, 1, 255]]])
    metric = PixelCalibration(3, n_bins=5)
    metric.update(probabilities, target)
    values = metric.compute()
    # bin 3: (.7 right, .65 wrong) |.5 - .675| * 2/4; bin 2: .45 right; bin 4: .9 wrong
    assert float(values["ece"]) == pytest.approx(0.175 * 2 / 4 + 0.55 / 4 + 0.9 / 4, abs=1e-6)
    # sum_c (p_c - onehot_c)^2 per pixel: .14, .995, .455, 1.715
    assert float(values["brier"]) == pytest.approx((0.14 + 0.995 + 0.455 + 1.715) / 4, abs=1e-6)
    bins = metric.bins()
    assert bins["count"].tolist() == [0, 0, 1, 2, 1]
    assert bins["accuracy"][3] == 0.5 and bins["confidence"][3] == pytest.approx(0.675)
    assert torch.isnan(bins["accuracy"][0])


def test_ece_and_brier_by_hand_binary():
    foreground = torch.tensor([0.9, 0.25, 0.55, 0.5])
    probabilities = torch.stack([1 - foreground, foreground]).reshape(1, 2, 2, 2)
    target = torch.tensor([[[1, 1], [0, 255]]])
    metric = PixelCalibration(2, n_bins=5)
    metric.update(probabilities, target)
    values = metric.compute()
    # confidences .9 (right), .75 (wrong), .55 (wrong), each alone in its bin
    assert float(values["ece"]) == pytest.approx((0.1 + 0.75 + 0.55) / 3, abs=1e-6)
    # both classes count: 2 (p - y)^2 per pixel
    assert float(values["brier"]) == pytest.approx(2 * (0.01 + 0.5625 + 0.3025) / 3, abs=1e-6)
    empty = PixelCalibration(2)
    empty.update(probabilities, torch.full((1, 2, 2), 255))
    assert all(torch.isnan(v) for v in empty.compute().values())


def random_batch(task: Task, seed: int, scale: float = 3.0):
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(2, task.out_channels, 24, 20, generator=generator)
    target = torch.randint(0, task.num_classes, (2, 24, 20), generator=generator)
    target[:, :3] = 255  # an ignored band
    return task.probabilities(logits), target


@pytest.mark.parametrize("classes", [2, 5])
def test_ece_equals_torchmetrics_and_brier_its_definition(classes):
    task = Task.of(classes)
    ours = PixelCalibration(classes)
    reference = MulticlassCalibrationError(classes, n_bins=15, norm="l1", ignore_index=255)
    confidences, corrects, squares = [], [], []
    for seed in (0, 1):  # two updates: the sums carry over
        probabilities, target = random_batch(task, seed)
        ours.update(probabilities, target)
        reference.update(probabilities, target)
        labelled = target != 255
        pixels = probabilities.movedim(1, -1)[labelled]
        confidence, predicted = pixels.max(1)
        confidences.append(confidence)
        corrects.append((predicted == target[labelled]).long())
        onehot = torch.nn.functional.one_hot(target[labelled], classes)
        squares.append(((pixels - onehot) ** 2).sum(1))
    values = ours.compute()
    assert float(values["ece"]) == pytest.approx(float(reference.compute()), abs=1e-6)
    # top-label ECE is the binary calibration error of (confidence, correct)
    binary = BinaryCalibrationError(n_bins=15, norm="l1")
    assert float(values["ece"]) == pytest.approx(
        float(binary(torch.cat(confidences), torch.cat(corrects))), abs=1e-6
    )
    assert float(values["brier"]) == pytest.approx(float(torch.cat(squares).mean()), abs=1e-6)
    assert 0.05 < float(values["ece"]) < 0.9  # not a trivial case


def test_states_merge_by_sum_as_processes_sync_them():
    task = Task.of(4)
    whole, first, second = (PixelCalibration(4) for _ in range(3))
    for seed, part in ((0, first), (1, second)):
        probabilities, target = random_batch(task, seed)
        part.update(probabilities, target)
        whole.update(probabilities, target)
    first.merge_state(second)  # what the sum reduction across processes does
    for name, value in whole.compute().items():
        assert float(first.compute()[name]) == pytest.approx(float(value), abs=1e-9)


# --- temperature scaling --------------------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 4])
def test_the_fitted_temperature_minimises_the_nll(classes):
    """Labels drawn from softmax(z / 3) of logits z: the fit finds about 3, and exactly the
    minimum scipy finds for the same pixels."""
    task = Task.of(classes)
    generator = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(20000, task.out_channels, generator=generator)
    probabilities = task.probabilities(logits[..., None, None] / 3)[..., 0, 0]
    labels = torch.multinomial(probabilities, 1, generator=generator)[:, 0]
    fitted = fit_temperature(logits, labels, task)

    def nll(temperature: float) -> float:
        log_p = task.probabilities(logits.double()[..., None, None] / temperature).log()
        return float(-log_p[torch.arange(len(labels)), labels].mean())

    best = minimize_scalar(nll, bounds=(0.1, 20), method="bounded", options={"xatol": 1e-6}).x
    assert fitted == pytest.approx(best, rel=1e-3)
    assert fitted == pytest.approx(3, rel=0.1)


def over_confident_run(demo_run: Path, root: Path, factor: float = 10.0, shift=1.4) -> Path:
    """A copy of the demo run whose best checkpoint's logits z become ``factor * (z - shift)``
    (its last layer changed): the short demo training leaves z > 0 almost everywhere, z > 1.4
    is right on about 87% of the pixels; x10 makes it far too sure of them."""
    shutil.copy(demo_run / "config.yaml", root / "config.yaml")
    checkpoint = torch.load(demo_run / "checkpoints" / "best.ckpt", weights_only=False)
    head = [k for k in checkpoint["state_dict"] if "segmentation_head" in k]
    assert head, "the demo network's last layer"
    for key in head:
        checkpoint["state_dict"][key] *= factor
        if key.endswith("bias"):
            checkpoint["state_dict"][key] -= factor * shift
    path = root / "checkpoints" / "best.ckpt"
    path.parent.mkdir()
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def calibrated(demo_run, tmp_path_factory):
    """An over-confident checkpoint, calibrated: (checkpoint, what calibrate returned)."""
    ckpt = over_confident_run(demo_run, tmp_path_factory.mktemp("over_confident"))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("calibrate", [f"ckpt_path={ckpt}", "pixels=5000"])
    return ckpt, calibrate(cfg, data_from_run=True)


def test_temperature_scaling_lowers_the_ece_of_an_over_confident_model(calibrated):
    ckpt, result = calibrated
    assert 2 < result["temperature"] < 100  # logits x10: softened
    assert result["ece_after"] < result["ece_before"] / 2
    assert result["nll_after"] < result["nll_before"]
    stored = json.loads(calibration_path(ckpt).read_text())
    assert calibration_path(ckpt).name == "best.calibration.json"
    assert stored["temperature"] == result["temperature"] and stored["split"] == "val"
    assert stored["images"] == 3 and stored["pixels_fitted"] == 5001  # ceil(5000 / 3) each
    assert stored["pixels_scored"] > stored["pixels_fitted"]
    assert len(stored["checkpoint_sha256"]) == 64


def test_eval_applies_the_stored_temperature_and_keeps_the_classes(calibrated, tmp_path):
    ckpt, result = calibrated
    report = evaluate(eval_config(ckpt, tmp_path / "a", "split=val"), data_from_run=True)
    raw = evaluate(eval_config(ckpt, tmp_path / "b", "split=val", "inference.temperature=1"), True)
    calibrated_metrics, raw_metrics = report["metrics"]["plain"], raw["metrics"]["plain"]
    assert report["inference"]["temperature"] == result["temperature"]
    assert raw["inference"]["temperature"] == 1.0
    assert calibrated_metrics["ece"] == pytest.approx(result["ece_after"], abs=1e-9)
    assert raw_metrics["ece"] == pytest.approx(result["ece_before"], abs=1e-9)
    assert calibrated_metrics["brier"] == pytest.approx(result["brier_after"], abs=1e-9)
    for name in ("iou", "dice", "acc"):  # argmax unchanged
        assert calibrated_metrics[name] == raw_metrics[name]
    folder = tmp_path / "a" / "eval"
    assert json.loads((folder / "eval.json").read_text())["inference"]["temperature"] > 2
    assert (folder / "reliability.png").stat().st_size > 10_000


def test_predict_writes_the_calibrated_probabilities(calibrated, tmp_path):
    ckpt, result = calibrated
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "a.png")
    predict(predict_config(ckpt, tmp_path / "in", tmp_path / "out", "probabilities=true"))
    expected = Segmenter(load_module(ckpt), temperature=result["temperature"])(image)[1]
    written = np.asarray(Image.open(tmp_path / "out" / "a_prob.png"))
    np.testing.assert_array_equal(written, np.round(expected * 255).astype(np.uint8))
    raw = Segmenter(load_module(ckpt))(image)[1]
    assert not np.array_equal(written, np.round(raw * 255).astype(np.uint8))


def test_export_divides_the_logits_by_the_stored_temperature(calibrated, tmp_path):
    ckpt, result = calibrated
    one_size = ("check.batch_sizes=[1]", "check.image_sizes=[[64,64]]")  # the parity check
    report = export(export_config(ckpt, "torchscript", f"output={tmp_path}/", *one_size))
    assert report["temperature"] == result["temperature"]
    assert "divided by the temperature" in report["output"]["meaning"]
    sidecar = json.loads((tmp_path / "best.torchscript.pt.json").read_text())
    assert sidecar["temperature"] == result["temperature"]
    images = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(tmp_path / "best.torchscript.pt"))
    with torch.no_grad():
        exported = loaded(images)
    expected = reference_logits(ckpt, images) / result["temperature"]
    torch.testing.assert_close(exported, expected, atol=1e-4, rtol=1e-5)


def test_a_model_without_information_is_refused_and_nothing_stored(demo_run, tmp_path):
    """The two-epoch demo model predicts the lesion almost everywhere (about 12% of the val
    pixels right): its NLL falls as T grows without end, so no temperature is stored."""
    ckpt = over_confident_run(demo_run, tmp_path, factor=1.0, shift=0.0)  # the model as trained
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("calibrate", [f"ckpt_path={ckpt}", "pixels=2000"])
        both = compose("calibrate", [f"ckpt_path='{ckpt},{ckpt}'"])
    with pytest.raises(LightsegError, match=r"The temperature fit ended at T=.*train the model"):
        calibrate(cfg)
    with pytest.raises(LightsegError, match="one checkpoint at a time"):
        calibrate(both)
    # the command line (make calibrate): exit 1 (the paragraph on stderr, as every tool's)
    with pytest.raises(SystemExit) as stopped:
        run_app(main, f"ckpt_path={ckpt}", "pixels=2000")
    assert stopped.value.code == 1
    assert not calibration_path(ckpt).exists()


def test_each_ensemble_member_uses_its_own_temperature(demo_checkpoint, tmp_path):
    first, second = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    shutil.copy(demo_checkpoint, first)
    shutil.copy(demo_checkpoint, second)
    write_calibration(first, {"temperature": 2.5})
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    ensemble = load_segmenter(f"{first},{second}", "cpu")
    assert ensemble.temperature == [2.5, 1.0]
    module = load_module(demo_checkpoint)
    soft, sharp = Segmenter(module, temperature=2.5)(image), Segmenter(module)(image)
    assert not np.allclose(soft, sharp, atol=1e-3)
    np.testing.assert_allclose(ensemble(image), (soft + sharp) / 2, atol=1e-6)
    np.testing.assert_array_equal(soft.argmax(0), sharp.argmax(0))
    with pytest.raises(LightsegError, match=r"inference.temperature=warm must be a number > 0"):
        load_segmenter(first, "cpu", {"temperature": "warm"})


@pytest.mark.parametrize(
    "content, reason",
    [
        ("{not json", "JSONDecodeError"),
        ('{"temperature": -1, "checkpoint_sha256": "x"}', "not a number > 0"),
        ('{"checkpoint_sha256": "x"}', "KeyError"),
    ],
)
def test_an_invalid_calibration_file_is_one_paragraph_naming_it_and_the_fix(
    demo_checkpoint, tmp_path, content, reason
):
    ckpt = tmp_path / "best.ckpt"
    shutil.copy(demo_checkpoint, ckpt)
    (tmp_path / "best.calibration.json").write_text(content)
    with pytest.raises(LightsegError) as raised:
        load_segmenter(ckpt, "cpu")
    message = str(raised.value)
    assert f"Calibration file '{tmp_path / 'best.calibration.json'}' is invalid" in message
    assert reason in message and "\n" not in message
    assert "Delete it" in message and f"make calibrate CKPT={ckpt}" in message


def test_a_calibration_file_of_a_changed_checkpoint_is_refused(demo_checkpoint, tmp_path):
    ckpt = tmp_path / "best.ckpt"
    shutil.copy(demo_checkpoint, ckpt)
    write_calibration(ckpt, {"temperature": 2.0})
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")  # training went on, say
    with pytest.raises(LightsegError, match="fitted for another version of"):
        load_segmenter(ckpt, "cpu")


# --- the test stage of training -------------------------------------------------------------


def test_the_test_stage_logs_the_calibration_of_the_best_checkpoint(demo_run):
    metrics = json.loads((demo_run / "metrics.json").read_text())
    module = load_module(demo_run / "checkpoints" / "best.ckpt")
    data = OmegaConf.merge(OmegaConf.load(demo_run / "config.yaml").data, {"split_dir": None})
    datamodule = instantiate(data, _convert_="all")
    datamodule.setup("test")
    by_hand = PixelCalibration(2)
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            batch = module.on_after_batch_transfer(batch, 0)
            probabilities = module.task.probabilities(module.outputs(batch)["logits"])
            by_hand.update(probabilities, batch["mask"])
    values = by_hand.compute()
    assert metrics["test/ece"] == pytest.approx(float(values["ece"]), abs=1e-5)
    assert metrics["test/brier"] == pytest.approx(float(values["brier"]), abs=1e-5)
    assert "val/ece" not in metrics
