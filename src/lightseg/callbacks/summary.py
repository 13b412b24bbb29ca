"""The network in one line at the start of training, instead of Lightning's summary table,
which lists lightseg's bookkeeping modules and reports ``FLOPs 0`` as if measured (it stays one
override away: ``callbacks.model_summary._target_=lightning.pytorch.callbacks.RichModelSummary``).
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from lightseg.utils.console import console


class NetworkSummary(ModelSummary):
    """``network  Unet  14.3 M parameters (14.3 M trainable), 57.3 MB`` on the main process."""

    def __init__(self) -> None:
        super().__init__(max_depth=1)  # the module's children: the network is ``net``

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, *_, **__):
        columns = dict(summary_data)
        rows = dict(zip(columns.get("Name", []), columns.get("Type", []), strict=False))
        console.print(
            f"[bold]{'network':<9}[/] {rows.get('net', 'network')} "
            f"{get_human_readable_count(total_parameters)} parameters "
            f"({get_human_readable_count(trainable_parameters)} trainable), {model_size:.1f} MB"
        )
