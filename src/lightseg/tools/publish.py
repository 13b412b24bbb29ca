"""Publish a run as a model folder that smp, lightseg and the Hugging Face Hub read.

    make publish RUN=<run folder> [OUTPUT=folder] [ARGS="push_to_hub=true repo_id=me/name"]

The folder (default ``<run>/publish``) holds smp's ``save_pretrained`` files of the best
checkpoint's network, ``lightseg.json`` (what lightseg needs beyond the network), the split
lists, a model card ``README.md`` in the Hub's format and ``app.py``, the Gradio demo
(:mod:`lightseg.tools.demo`) serving the folder. Only smp networks publish: the Hub's loaders know
nothing of torchvision's or SegNet's classes. Pushing is opt-in; when the Hub does not answer,
the folder stays and the command says how to push later.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import huggingface_hub
import segmentation_models_pytorch as smp
import yaml
from huggingface_hub import ModelCard, ModelCardData
from hydra.utils import get_class
from omegaconf import DictConfig
from safetensors.torch import load_file

from lightseg.checkpoints import load_module, read_temperature
from lightseg.config import app
from lightseg.errors import LightsegError
from lightseg.models import SegmentationModule
from lightseg.models.lora import merge_adapters
from lightseg.runs.folder import PER_IMAGE, SPLITS, RunFolder, read_yaml
from lightseg.runs.per_image import read_per_image
from lightseg.runs.protocol import ids_digest
from lightseg.tools.inference import Segmenter, build_segmenter
from lightseg.tools.significance import LEVEL, bootstrap_ci
from lightseg.utils.console import console
from lightseg.utils.loggers import answers

#: lightseg's own description of the published network (beside smp's config.json).
RECORD = "lightseg.json"


def publish(cfg: DictConfig) -> Path:
    """Write the folder for ``cfg.run`` (and push it when asked); returns the folder."""
    run = RunFolder(cfg.run)
    if not run.best.is_file():
        raise LightsegError(
            f"run='{run}' has no checkpoints/best.ckpt: give a finished run folder, e.g. "
            "RUN=logs/demo/runs/<time> (make train writes one)."
        )
    if cfg.get("push_to_hub") and not cfg.get("repo_id"):
        raise LightsegError(
            "push_to_hub=true needs repo_id=<user or organisation>/<name> (the Hub repository, "
            "created if missing)."
        )
    module = load_module(run.best)
    net = merge_adapters(module.net)  # LoRA folded in: a plain network for smp's loader
    if not isinstance(net, smp.base.SegmentationModel):
        raise LightsegError(
            f"make publish writes segmentation-models-pytorch's format, which only smp networks "
            f"have; run '{run}' trained {type(net).__name__} (model=torchvision or model=segnet). "
            "Share it as ONNX or TorchScript instead (make export CKPT=<its best.ckpt>), or "
            "train with model=smp to publish."
        )
    # the default folder's model card is the one make bundle packs (publish/README.md)
    folder = Path(cfg.output) if cfg.get("output") else run.path / "publish"
    folder.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(folder)  # model.safetensors, config.json (and smp's card, replaced)
    model = {**module.hparams.model, "peft": {**(module.hparams.model.get("peft") or {}), "r": 0}}
    record = {
        "module": f"{type(module).__module__}.{type(module).__name__}",
        "hyper_parameters": {**module.hparams, "model": model},
        "temperature": read_temperature(run.best),
    }
    (folder / RECORD).write_text(json.dumps(record, indent=2, default=list))
    if (run.path / SPLITS).is_dir():
        shutil.copytree(run.path / SPLITS, folder / SPLITS, dirs_exist_ok=True)
    shutil.copyfile(Path(__file__).with_name("demo.py"), folder / "app.py")
    model_card(run, module, cfg.get("repo_id")).save(folder / "README.md")
    console.print(f"Published [bold]{folder}[/]: model.safetensors, config.json, README.md, app.py")
    if cfg.get("push_to_hub"):
        push(folder, str(cfg.repo_id), bool(cfg.get("private", True)))
    return folder


def load_published(folder: Path, device) -> Segmenter:
    """The model of a published folder (what ``app.py`` serves), with its temperature."""
    record = json.loads((folder / RECORD).read_text())
    module = get_class(record["module"])(**{**record["hyper_parameters"], "compile": False})
    module.net.load_state_dict(load_file(folder / "model.safetensors"))
    temperature = record.get("temperature", 1.0)
    return build_segmenter(module.eval().to(device), {"temperature": temperature})


def push(folder: Path, repo_id: str, private: bool) -> None:
    """Upload ``folder`` to the Hub repository ``repo_id``; one paragraph when it cannot."""
    endpoint = huggingface_hub.constants.ENDPOINT
    later = (
        f"The folder '{folder}' is kept: push it later from a machine with internet with "
        f"`hf upload {repo_id} {folder}`, or re-run make publish there."
    )
    if huggingface_hub.constants.HF_HUB_OFFLINE or not answers(endpoint, 3.0):
        raise LightsegError(
            f"Cannot push to the Hugging Face Hub: {endpoint} does not answer (offline, or "
            f"HF_HUB_OFFLINE=1). {later}"
        )
    if huggingface_hub.get_token() is None:
        raise LightsegError(
            f"Cannot push to {repo_id}: no Hugging Face token. Set HF_TOKEN (a write token from "
            f"https://huggingface.co/settings/tokens) or run `hf auth login`. {later}"
        )
    try:
        api = huggingface_hub.HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        url = api.upload_folder(repo_id=repo_id, folder_path=folder)
    except (OSError, huggingface_hub.errors.HfHubHTTPError, ValueError) as error:
        raise LightsegError(
            f"Pushing to {repo_id} failed ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}). {later}"
        ) from None
    console.print(f"Pushed to [bold]{url}[/]")


def model_card(run: RunFolder, module: SegmentationModule, name: str | None) -> ModelCard:
    """The Hub's card: YAML front matter, then what the model is and how its numbers came."""
    config = read_yaml(run.config) or {}
    info, metrics = run.info() or {}, run.read_metrics() or {}
    model, data = config.get("model") or {}, config.get("data") or {}
    dataset = str((data.get("source") or {}).get("_target_", "unknown")).rsplit(".", 1)[-1]
    tests = {
        k: v for k, v in metrics.items() if k.startswith("test/") and isinstance(v, int | float)
    }
    arch, encoder = type(module.net).__name__, module.hparams.model.get("encoder_name")
    card = ModelCardData(
        library_name="segmentation-models-pytorch",
        pipeline_tag="image-segmentation",
        tags=["lightseg", "semantic-segmentation", "segmentation-models-pytorch", arch],
        datasets=[dataset],
        metrics=sorted({k.split("/")[1] for k in tests if "/" not in k[5:]}),
    )
    versions = {"lightseg": info.get("lightseg"), **(info.get("versions") or {})}
    git = info.get("git") or {}
    sections = [
        f"# {name or config.get('name', run.path.name)}: {arch}\n\n{arch} with a {encoder} "
        f"encoder for {module.task.num_classes} classes ({', '.join(module.task.classes)}), "
        "trained with lightseg and published by its `make publish`.",
        USAGE,
        "## Model\n\n"
        + bullets(
            architecture=arch,
            encoder=encoder,
            pretrained_source=pretrained_source(model),
            input=f"{module.normalize.mean.shape[1]} channel(s) scaled to 0..1, trained at "
            f"{(module.hparams.get('inference') or {}).get('image_size')} px",
            normalisation=f"{json.dumps(module.hparams.get('normalization'))} (lightseg "
            "applies it; smp's network alone takes normalised images)",
            output="one foreground logit (sigmoid)"
            if module.task.binary
            else "one logit per class (softmax)",
            temperature=read_temperature(run.best),
        ),
        "## Data and split\n\n"
        + bullets(
            dataset=f"{dataset} ({(data.get('source') or {}).get('root')})",
            split=json.dumps(data.get("split")),
            **split_lists(run),
        ),
        "## Training recipe\n\n"
        + bullets(
            experiment=config.get("name"),
            loss=", ".join(config.get("loss") or {}),
            optimizer=describe(config.get("optimizer")),
            scheduler=describe((config.get("scheduler") or {}).get("scheduler")),
            epochs=(config.get("trainer") or {}).get("max_epochs"),
            best_epoch=metrics.get("best/epoch"),
            batch_size=data.get("batch_size"),
            image_size=data.get("image_size"),
            seed=config.get("seed"),
            train_augmentations=", ".join(
                str(t.get("_target_", "?")).rsplit(".", 1)[-1]
                for t in (data.get("transforms") or {}).get("train") or []
            ),
        ),
        "## Test metrics\n\n" + metric_table(tests, run.path / PER_IMAGE),
    ]
    if isinstance(metrics.get("protocol"), dict):
        sections.append("## Protocol\n\n```yaml\n" + yaml.safe_dump(metrics["protocol"]) + "```")
    sections.append(
        "## Software\n\n"
        + bullets(
            commit=f"{git.get('commit')} (branch {git.get('branch')}"
            + (", uncommitted changes kept in the run folder)" if git.get("dirty") else ")"),
            command=info.get("command"),
            python=(info.get("machine") or {}).get("python"),
        )
        + "\n"
        + bullets(versions)
    )
    return ModelCard(f"---\n{card.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


USAGE = """## Use

```python
import segmentation_models_pytorch as smp
net = smp.from_pretrained("<this folder or repository>")  # logits of normalised images
```

In lightseg: start a run from it (a new head for another class count) with
`make train ARGS="model=smp model.from_pretrained=<this folder or repository>"`, or serve the
demo: `pip install gradio` with lightseg installed, then `python app.py` in this folder."""


def bullets(named: dict[str, Any] | None = None, **items: Any) -> str:
    """Markdown list lines: ``named`` as given, then ``items`` with underscores as spaces."""
    lines = [*(named or {}).items(), *((k.replace("_", " "), v) for k, v in items.items())]
    return "\n".join(f"- {key}: {value}" for key, value in lines)


def describe(config: dict | None) -> str:
    """``AdamW (lr=0.002, weight_decay=0.0001)`` from a Hydra ``_target_`` config."""
    if not config:
        return "none"
    options = ", ".join(f"{k}={v}" for k, v in config.items() if not k.startswith("_"))
    return f"{str(config.get('_target_')).rsplit('.', 1)[-1]} ({options})"


def pretrained_source(model: dict) -> str:
    if model.get("from_pretrained"):
        return f"whole network from {model['from_pretrained']}"
    weights = model.get("encoder_weights") or model.get("weights")
    if model.get("encoder_weights_file"):
        return f"encoder weights from the file {model['encoder_weights_file']}"
    return f"encoder weights '{weights}'" if weights else "none (trained from scratch)"


def split_lists(run: RunFolder) -> dict[str, str]:
    """Each split list's image count and SHA-256 (the protocol card's hash of its ids)."""
    out = {}
    for path in sorted((run.path / SPLITS).glob("*.txt")):
        ids = path.read_text().split()
        out[f"{path.stem}_images"] = f"{len(ids)} (splits/{path.name}, sha256 {ids_digest(ids)})"
    return out


def metric_table(tests: dict[str, float], per_image: Path) -> str:
    """The run's test numbers, and per image the mean with its percentile-bootstrap CI."""
    if not tests:
        return "The run recorded no test metrics (metrics.json)."
    images = read_per_image(per_image, "test/")
    lines = [
        f"| metric | value (metrics.json) | per-image mean [{LEVEL:.0%} CI] | images |",
        "|---|---|---|---|",
    ]
    for key, value in sorted(tests.items()):
        scores = [v for v in images.get(key, {}).values() if v == v]  # NaN: no value
        ci = bootstrap_ci(scores)
        mean = f"{sum(scores) / len(scores):.4f}" if scores else ""
        interval = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
        lines.append(f"| {key[5:]} | {value:.4f} | {mean}{interval} | {len(scores) or ''} |")
    return "\n".join(lines) + (
        f"\n\nValue: as the run's test stage computed it (pooled over images where the metric "
        f"is pooled). CI: {LEVEL:.0%} percentile bootstrap of the mean over the test images "
        "(10,000 resamples, seed 0) from per_image.csv."
    )


@app("publish")
def main(cfg: DictConfig) -> None:
    publish(cfg)


if __name__ == "__main__":
    main()
