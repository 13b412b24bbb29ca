"""A web demo of a segmentation model (Gradio): upload an image, see the mask overlay, the
foreground probability and make predict's effects (background replaced, colour splash).

    make demo CKPT=best.ckpt | RUN=<run folder> [PORT=7860]
    python -m lightseg.tools.demo <checkpoint, run folder or published folder> [--port 7860]
    python app.py            (in a folder make publish wrote: this file, serving that folder)

The model call is make predict's (its ``read_input`` and the checkpoint's ``Segmenter``), so the
page shows what make predict writes. Needs gradio (``pip install -e '.[demo]'``); host and port
default to Gradio's (``GRADIO_SERVER_NAME``, ``GRADIO_SERVER_PORT``), as Hugging Face Spaces set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import ImageColor

from lightseg.errors import LightsegError, user_errors
from lightseg.runs.folder import RunFolder
from lightseg.tools.effects import apply_effect
from lightseg.tools.inference import Segmenter, load_segmenter
from lightseg.tools.predict import read_input
from lightseg.utils.devices import inference_device
from lightseg.visualize import class_colors, display_image, overlay


def load(source: str | None) -> Segmenter:
    """The model of a published folder (default: this file's), a run folder or a checkpoint."""
    path = Path(source) if source else Path(__file__).parent
    device = inference_device("auto")
    if (path / "lightseg.json").is_file():  # written by make publish
        from lightseg.tools.publish import load_published

        return load_published(path, device)
    if source is None:
        raise LightsegError(
            "Give the model to serve: make demo CKPT=<best.ckpt> or RUN=<run folder> (or "
            "python -m lightseg.tools.demo <checkpoint, run folder or published folder>)."
        )
    checkpoint = RunFolder(path).best if path.is_dir() else path
    if not checkpoint.is_file():
        raise LightsegError(
            f"'{source}' is neither a checkpoint, nor a run folder with checkpoints/best.ckpt, "
            "nor a folder make publish wrote: give one as CKPT=... or RUN=... ."
        )
    return load_segmenter(str(checkpoint), device)


def segment(
    segmenter: Segmenter,
    path: str,
    colour: str = "#00b140",
    feather: float = 3.0,
    threshold: float | None = 0.5,
    alpha: float = 0.5,
) -> tuple[np.ndarray, ...]:
    """Overlay, foreground probability (x 255), background replaced by ``colour``, colour
    splash: uint8 pictures of the image at ``path``."""
    image = read_input(Path(path), segmenter.input.channels)
    probabilities = segmenter(image)
    shown = image if image.dtype == np.uint8 and image.shape[-1] == 3 else display_image(image)
    mask = probabilities.argmax(0).astype(np.uint8)
    foreground = 1.0 - probabilities[0]  # binary: the class; multiclass: any non-background
    rgb = ImageColor.getrgb(colour)[:3]
    return (
        overlay(shown, mask, class_colors(), alpha),
        np.round(foreground * 255).astype(np.uint8),
        apply_effect("background", shown, foreground, rgb, feather, threshold),
        apply_effect("color-splash", shown, foreground, feather=feather, threshold=threshold),
    )


def interface(segmenter: Segmenter, title: str = "lightseg demo"):
    """The page: an upload, effect settings, and the four result pictures (PNG)."""
    try:
        import gradio as gr
    except ImportError:
        raise LightsegError(
            "The demo needs gradio, which is not installed: pip install -e '.[demo]' (or pip "
            "install gradio)."
        ) from None

    def run(path, colour, feather, threshold):
        if not path:
            return (None,) * 4
        try:
            return segment(segmenter, path, colour, feather, threshold or None)
        except LightsegError as error:
            raise gr.Error(str(error)) from None

    classes = ", ".join(segmenter.task.classes)
    with gr.Blocks(title=title) as page:
        gr.Markdown(f"# {title}\nClasses: {classes}. Upload an image to segment it.")
        with gr.Row():
            image = gr.Image(type="filepath", label="Image", elem_id="image")
            with gr.Column():
                colour = gr.ColorPicker(value="#00b140", label="New background")
                feather = gr.Slider(0, 20, value=3, step=0.5, label="Edge feather (pixels)")
                threshold = gr.Slider(0, 0.95, value=0.5, step=0.05, label="Threshold (0: soft)")
                button = gr.Button("Segment", variant="primary")
        with gr.Row():
            outputs = [
                gr.Image(label=label, format="png", elem_id=key, type="numpy")
                for key, label in (
                    ("overlay", "Mask overlay"),
                    ("probability", "Foreground probability"),
                    ("background", "Background replaced"),
                    ("splash", "Colour on the foreground only"),
                )
            ]
        settings = [image, colour, feather, threshold]
        image.upload(run, settings, outputs)
        button.click(run, settings, outputs)
    return page


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", help="checkpoint, run folder or published folder")
    parser.add_argument("--port", type=int, default=None, help="default: Gradio's (7860)")
    parser.add_argument("--host", default=None, help="default: Gradio's (127.0.0.1)")
    args = parser.parse_args(argv)
    with user_errors():
        page = interface(load(args.source))
    page.launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
