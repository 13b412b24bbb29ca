"""Optuna pruning inside a trial's run (``make tune``): each validation epoch's value of the
search's metric goes to the study, whose pruner may stop the run. The run is a process of its
own, so the callback opens the study from its storage and its trial by number; the pruner is the
search's, kept in the study's user attributes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import optuna
from hydra.utils import instantiate
from lightning.pytorch.trainer.states import TrainerFn

from lightseg.errors import TrialPruned


def open_storage(storage: str) -> optuna.storages.BaseStorage | str:
    """An RDB URL as it is (``sqlite:///…``, ``postgresql://…``); a path as a journal file,
    which processes on one machine or on shared storage may write at once (no server)."""
    if "://" in storage:
        return storage
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(str(storage))
    return optuna.storages.JournalStorage(backend)


class OptunaPruning(L.Callback):
    """Report ``monitor`` to trial ``trial`` of study ``study`` after every validation epoch
    (the epoch is the step); raise :class:`TrialPruned` when the pruner says so."""

    def __init__(self, storage: str, study: str, trial: int, monitor: str) -> None:
        self.monitor = monitor
        self.study = optuna.load_study(study_name=study, storage=open_storage(storage))
        self.study.pruner = instantiate(self.study.user_attrs["pruner"])
        trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(
            self.study._study_id, trial
        )
        self.trial = optuna.Trial(self.study, trial_id)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        fitting = trainer.state.fn == TrainerFn.FITTING  # not the best checkpoint's validation
        if not fitting or trainer.sanity_checking or value is None:
            return
        epoch = trainer.current_epoch
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            pruner = type(self.study.pruner).__name__
            raise TrialPruned(
                f"Trial {self.trial.number} of study '{self.study.study_name}' was pruned after "
                f"epoch {epoch} by its {pruner}: {self.monitor}={float(value):.4g}."
            )
