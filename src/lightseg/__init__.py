"""lightseg: a Lightning + Hydra template for semantic image segmentation."""

from pathlib import Path

__version__ = "0.1.0"

#: The repository's ``configs/`` folder; the template runs from its clone (editable install).
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")

from lightseg.config import register_resolvers  # noqa: E402  (configs use them)

register_resolvers()
