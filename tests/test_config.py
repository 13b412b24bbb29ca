"""Composition that cannot lie: a chosen group option is what runs, and every key is checked."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from lightseg import CONFIG_DIR
from lightseg.config import validate
from lightseg.errors import LightsegError
from lightseg.train import train
from tests.conftest import EXPERIMENTS, FAST, ONE_STEP, make_config

CONFIGS = Path(CONFIG_DIR)
#: Options that need something the user supplies (custom: the network's _target_).
NEEDS_INPUT = {"model": {"custom"}}


def options(group: str) -> list[str]:
    return sorted(
        p.stem
        for p in (CONFIGS / group).glob("*.yaml")
        if p.stem not in NEEDS_INPUT.get(group, set())
    )


def composed(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=unused", *overrides])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_takes_every_option_of_the_groups_it_sets(experiment):
    """Experiments set only keys every option of a group has, so any choice on top works."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for group in ("model", "data", "optimizer"):
            for option in options(group):
                overrides = ["paths.output_dir=unused", f"{group}={option}"]
                cfg = compose("train", overrides=[f"experiment={experiment}", *overrides])
                validate(cfg)
                if group == "model":  # the option's own network, untouched by the experiment
                    assert cfg.model == compose("train", overrides=overrides).model


def test_a_key_of_another_family_is_an_error_naming_key_and_option():
    cfg = composed("experiment=demo", "model=segnet", "+model.encoder_name=resnet18")
    choices = {"model": "segnet"}
    with pytest.raises(LightsegError) as error:
        validate(cfg, choices)
    message = str(error.value)
    assert "model.encoder_name: not a setting of lightseg.models.segnet.build" in message
    assert "(config group option model=segnet)" in message
    assert "out_channels, encoder_weights, in_channels" in message


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_epochs=ten", r"trainer.max_epochs='ten' is not valid: .* Optional\[int\]"),
        ("trainer.precision=17", r"trainer.precision=17 is not valid"),
        ("optimizer.lr=fast", r"optimizer.lr='fast' is not valid"),
        ("+loss.ce.term.label_smoothin=0.1", r"loss.ce.term.label_smoothin: not a setting"),
        ("data.source._target_=lightseg.data.nope.Nope", r"cannot be imported"),
    ],
)
def test_wrong_values_and_targets_are_named(override, message):
    cfg = composed("experiment=demo", override)
    with pytest.raises(LightsegError, match=message):
        validate(cfg)


@pytest.mark.parametrize(
    "model",
    [
        ("model=segnet", "model.encoder_weights=null"),
        ("model=torchvision", "model.arch=lraspp_mobilenet_v3_large", "model.encoder_weights=null"),
    ],
)
def test_other_families_train_their_own_network_under_the_default_experiment(
    model, tmp_path, data_dir
):
    cfg = make_config(
        tmp_path, "experiment=demo", *model, *ONE_STEP, "data.image_size=64", data_dir=data_dir
    )
    train(cfg)
    checkpoint_model = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = checkpoint_model["hyper_parameters"]["model"]
    family = "segnet" if "segnet" in model[0] else "torchvision_models"
    assert hparams["_target_"].startswith(f"lightseg.models.{family}.")
    assert "encoder_name" not in hparams


def test_square_image_size_trains(tmp_path, data_dir):
    cfg = make_config(
        tmp_path, "experiment=demo", *ONE_STEP, "data.image_size=64", data_dir=data_dir
    )
    metrics = train(cfg)
    assert 0.0 <= metrics["test/dice"] <= 1.0
    hparams = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert hparams["hyper_parameters"]["inference"]["image_size"] == [64, 64]


def test_missing_data_is_found_before_any_weights_are_downloaded(tmp_path, monkeypatch):
    import segmentation_models_pytorch as smp

    def no_download(*args, **kwargs):
        raise AssertionError("the data check must come before pretrained weights")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", no_download)
    cfg = make_config(tmp_path, "experiment=ph2_unet", *FAST, data_dir=tmp_path / "nothing")
    with pytest.raises(LightsegError, match="PH2 not found"):
        train(cfg)


CORE = (
    "data",
    "models",
    "losses.py",
    "metrics",
    "task.py",
    "train.py",
    "experiment.py",
    "config.py",
    "runs",
)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_core_never_imports_the_tools():
    package = CONFIGS.parent / "src" / "lightseg"
    files = [
        p
        for part in CORE
        for p in ([package / part] if part.endswith(".py") else (package / part).rglob("*.py"))
    ]
    files += list((package / "callbacks").rglob("*.py")) + list((package / "utils").rglob("*.py"))
    assert len(files) > 20
    for path in files:
        tools = {m for m in imported_modules(path) if m.startswith("lightseg.tools")}
        assert not tools, f"{path.relative_to(package)} imports {tools}"
    assert not (package / "bench.py").exists()  # the benchmark is not part of the library


def test_the_package_import_graph_has_no_cycles_and_no_upward_imports():
    """Every import counts, function-local ones too: a cycle is a cycle wherever it hides."""
    package = CONFIGS.parent / "src" / "lightseg"
    graph: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[name] = set()
        for imported in imported_modules(path):
            while imported.startswith("lightseg.") and imported not in graph.get(name, ()):
                graph[name].add(imported)
                imported = imported.rsplit(".", 1)[0]
    modules = set(graph)
    edges = {
        m: {i for i in graph[m] if i in modules and i != m and not m.startswith(i + ".")}
        for m in modules
    }
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            assert state.get(target) != 1, " -> ".join([*trail, module, target])
            if target not in state:
                visit(target, [*trail, module])
        state[module] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module, [])
    assert len(modules) > 50
    # no upward imports: the core never imports the tools; utils import only utils and errors
    for module, targets in edges.items():
        if not module.startswith("lightseg.tools"):
            assert not {t for t in targets if t.startswith("lightseg.tools")}, module
        if module.startswith("lightseg.utils"):
            below = ("lightseg.utils", "lightseg.errors")
            assert all(t.startswith(below) or t == "lightseg" for t in targets), module


def test_train_lr_find_and_the_benchmarks_build_the_experiment_in_one_place():
    """One assembly: each caller builds through lightseg.experiment.build and none of them
    instantiates the DataModule, module or Trainer itself (the copy that drifted into a crash)."""
    root = Path(__file__).resolve().parents[1]
    callers = [
        "src/lightseg/train.py",
        "src/lightseg/lr_find.py",
        "benchmarks/bench.py",
        "benchmarks/time_to_accuracy.py",
    ]
    for caller in callers:
        tree = ast.parse((root / caller).read_text())
        called = {
            node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
        }
        assert "build" in called, caller
        assert not called & {"build_module", "build_trainer", "SegmentationModule", "Trainer"}, (
            caller
        )
