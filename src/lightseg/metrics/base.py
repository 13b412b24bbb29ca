"""The base of lightseg's metrics: a torchmetrics ``Metric`` that knows the task."""

from __future__ import annotations

from torchmetrics import Metric

from lightseg.task import IGNORE_INDEX, Task


class TaskMetric(Metric):
    """A metric that knows the task's classes and the ignore label (filled in by lightseg).
    Subclasses add states in ``add_states``; one with options repeats this signature, since
    lightseg fills in only the arguments a constructor's signature names."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    #: Whether the metric is defined for binary tasks only (foreground vs background).
    binary_only = False

    def __init__(
        self,
        num_classes: int,
        classes: list[str] | None = None,
        ignore_index: int = IGNORE_INDEX,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.task = Task(tuple(classes)) if classes else Task.of(num_classes)
        self.ignore_index = int(ignore_index)
        if self.binary_only and not self.task.binary:
            raise ValueError(
                f"{type(self).__name__} scores the foreground of binary tasks (2 classes), but "
                f"this task has {self.task.num_classes}: leave it out of the metrics for this "
                "dataset (metrics=multiclass)."
            )
        self.add_states()

    def add_states(self) -> None:
        """Declare the metric's states (``self.add_state``)."""


def class_key(name: str) -> str:
    """A class name as it appears in metric names (``iou_<class>``)."""
    return str(name).replace(" ", "_")
