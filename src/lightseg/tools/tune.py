"""Hyperparameter search with Optuna: workers that share one study, prune, and survive a stop.

    python -m lightseg.tools.tune experiment=demo [search=default] [search.n_trials=20] [overrides]
    python -m lightseg.tools.tune report experiment=demo search.study=<name>
    (make tune EXP=demo TRIALS=20 STUDY=<name> ARGS="...", make tune-report STUDY=<name>)

The config group ``search`` (configs/search/*.yaml) holds space, objective, sampler and pruner.
Each trial is ``python -m lightseg.train`` in a process of its own with the sampled overrides, in
``logs/<name>/studies/<study>/<trial number>/``; its callback (lightseg.callbacks.pruning) reports
each validation epoch to the study, which may prune it. The study is a journal file (or an RDB
URL) that any number of workers share. A stop signal ends the running trial (its run saves
last.ckpt) and queues its parameters again, so the next start runs them first.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import optuna
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightseg.callbacks.pruning import open_storage
from lightseg.config import compose_config, explain
from lightseg.errors import LightsegError, TrainingInterrupted, user_errors
from lightseg.runs import RunFolder
from lightseg.runs.resume import quoted
from lightseg.utils.console import console
from lightseg.utils.signals import stop_signals


def main() -> None:
    args = sys.argv[1:]
    with user_errors():
        if args[:1] == ["report"]:
            report(*setup(args[1:], create=False))
        else:
            tune(*setup(args))


def setup(args: list[str], create: bool = True) -> tuple[DictConfig, list[str], optuna.Study, str]:
    """The composed config (``search=default`` unless one is chosen), the overrides every trial
    gets (the command's, less ``search``'s), the study (created if new and ``create``) and its
    storage (a journal file's absolute path or an RDB URL)."""
    if not any(a.split("=", 1)[0].lstrip("+~") == "search" for a in args):
        args = ["search=default", *args]
    try:
        cfg = compose_config(args)
    except HydraException as error:
        raise LightsegError(explain(error, args, "train")) from None
    trial_args = [a for a in args if not a.lstrip("+~").split("=", 1)[0].startswith("search")]
    search = cfg.search
    direction = {"max": "maximize", "min": "minimize"}.get(str(search.direction))
    if direction is None:
        raise LightsegError(
            f"search.direction={search.direction} is neither max nor min: set it in "
            "configs/search/<name>.yaml (by default it is the experiment's monitor_mode)."
        )
    storage = str(search.storage or study_folder(cfg).with_suffix(".log"))
    storage = storage if "://" in storage else str(Path(storage).resolve())
    with warnings.catch_warnings():  # JournalStorage's 'experimental' notes on every start
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if not create and (
            ("://" not in storage and not Path(storage).is_file())
            or search.study not in optuna.get_all_study_names(open_storage(storage))
        ):
            raise LightsegError(
                f"There is no study '{search.study}' in {storage}: run make tune with this "
                "STUDY and EXP first, or name the study (STUDY=) and experiment (EXP=) it ran with."
            )
        study = optuna.create_study(
            study_name=search.study,
            storage=open_storage(storage),
            sampler=instantiate(search.sampler),
            direction=direction,
            load_if_exists=True,
        )
    return cfg, trial_args, study, storage


def study_folder(cfg: DictConfig) -> Path:
    """``<log_dir>/<name>/studies/<study>``: the trials' run folders and the report."""
    return Path(cfg.paths.log_dir).resolve() / cfg.name / "studies" / str(cfg.search.study)


def suggest(trial: optuna.Trial, key: str, space: DictConfig) -> object:
    """``{choices: [...]}``: categorical; ``{low, high, log, step}``: int when both bounds are."""
    if "choices" in space:
        return trial.suggest_categorical(key, list(space.choices))
    low, high, log, step = space.low, space.high, space.get("log", False), space.get("step")
    if isinstance(low, int) and isinstance(high, int):
        return trial.suggest_int(key, low, high, step=step or 1, log=log)
    return trial.suggest_float(key, low, high, step=step, log=log)


def tune(cfg: DictConfig, trial_args: list[str], study: optuna.Study, storage: str) -> None:
    """Run trials until the study holds ``search.n_trials`` of them (:func:`counted`)."""
    study.set_user_attr("pruner", OmegaConf.to_container(cfg.search.pruner, resolve=True))
    study.set_user_attr("overrides", trial_args)
    stopped: list[int] = []  # the stop signals received
    child: list[subprocess.Popen] = []

    def on_signal(signum: int, frame) -> None:  # the trial's run stops itself (last.ckpt)
        stopped.append(signum)  # the search stops after this trial
        for process in child:
            process.send_signal(signum)

    previous = {signum: signal.signal(signum, on_signal) for signum in stop_signals()}
    try:
        run_trials(cfg, trial_args, study, storage, stopped, child)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stopped:
        raise TrainingInterrupted(
            f"The search stopped on {signal.Signals(stopped[0]).name}; its running trial was "
            "marked failed and queued again. Run the same command to continue the study.",
            stopped[0],
        )
    states = Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False))
    shown = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    console.print(f"Study '{study.study_name}': {shown}. Results: make tune-report.")


def counted(study: optuna.Study) -> int:
    """Trials towards ``search.n_trials``: all but the queued ones and those stopped by a signal
    (queued again); failed ones count, so a search whose every run fails ends."""
    trials = study.get_trials(deepcopy=False)
    waiting = optuna.trial.TrialState.WAITING
    return sum(t.state != waiting and not t.user_attrs.get("queued_again") for t in trials)


def run_trials(cfg, trial_args, study, storage: str, stopped: list, child: list) -> None:
    """One trial after another, each a training process (``child`` while it runs)."""
    search, folder = cfg.search, study_folder(cfg)
    wandb = "wandb" in (cfg.get("logger") or {})  # its runs in a group named after the study
    group = [f"logger.wandb.group={search.study}"] if wandb else []
    while not stopped and counted(study) < search.n_trials:
        trial = study.ask()
        params = {key: suggest(trial, key, space) for key, space in search.params.items()}
        values = [f"{key}={value}" for key, value in params.items()]
        run = folder / str(trial.number)
        trial.set_user_attr("overrides", values)
        trial.set_user_attr("run", str(run))
        pruning = {
            "_target_": "lightseg.callbacks.pruning.OptunaPruning",
            "storage": quoted(storage),
            "study": study.study_name,
            "trial": trial.number,
            "monitor": search.metric,
        }
        command = [sys.executable, "-m", "lightseg.train", *trial_args, *values, *group]
        command += [f"+callbacks.optuna_pruning.{k}={v}" for k, v in pruning.items()]
        command += [f"hydra.run.dir={quoted(run)}"]
        console.print(f"Trial {trial.number} of study '{study.study_name}': {' '.join(values)}")
        child.append(subprocess.Popen(command))
        code = child[0].wait()
        child.clear()
        end(study, trial, run, search.metric, params, stopped, code)


def end(study, trial, run: Path, metric: str, params: dict, stopped: list[int], code: int) -> None:
    """Tell the study how the trial's run ended (its run_info.json), note it and the process's
    exit code in the run's ``trial.json``; a run stopped by a signal is queued again."""
    status = RunFolder(run).status
    value = (RunFolder(run).read_metrics() or {}).get(metric) if status == "finished" else None
    if value is not None:
        study.tell(trial, value)
    elif status == "pruned":
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        again = bool(stopped) or status == "interrupted"
        trial.set_user_attr("queued_again", again)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if again:
            study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
    if run.is_dir():
        record = {"study": study.study_name, "trial": trial.number, "params": params}
        record.update(status=status, value=value, exit_code=code)
        (run / "trial.json").write_text(json.dumps(record, indent=2))


def reproduce_command(study: optuna.Study) -> str:
    """``make train`` with the search's overrides and the best trial's values."""
    args = [*study.user_attrs.get("overrides", []), *study.best_trial.user_attrs["overrides"]]
    exp = [a.split("=", 1)[1] for a in args if a.startswith("experiment=")]
    args = [a for a in args if not a.startswith("experiment=")]
    make_exp = f"EXP={exp[-1]} " if exp else ""
    return f'make train {make_exp}ARGS="{" ".join(shlex.quote(a) for a in args)}"'


def report(cfg: DictConfig, trial_args: list[str], study: optuna.Study, storage: str) -> None:
    """Into the study's folder: trials.csv and trials.md (every trial), best.json, and
    Optuna's plots (history, importances, intermediate values) as PNG; print the best."""
    finished = study.get_trials(False, (optuna.trial.TrialState.COMPLETE,))
    if not finished:
        raise LightsegError(
            f"Study '{study.study_name}' has no finished trial yet ({len(study.trials)} in all): "
            "run make tune with this STUDY (and EXP) first, or check search.study / EXP."
        )
    folder = study_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    table = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs"))
    table.to_csv(folder / "trials.csv", index=False)
    shown = table.drop(columns=[c for c in table if c.startswith("user_attrs")])
    rows = [list(shown.columns), ["---"] * len(shown.columns), *shown.astype(str).values.tolist()]
    (folder / "trials.md").write_text("".join(f"| {' | '.join(r)} |\n" for r in rows))
    best, command = study.best_trial, reproduce_command(study)
    best_record = {"trial": best.number, "value": best.value, "params": best.params}
    (folder / "best.json").write_text(json.dumps({**best_record, "command": command}, indent=2))
    plots = {
        "history": optuna.visualization.matplotlib.plot_optimization_history,
        "importances": optuna.visualization.matplotlib.plot_param_importances,
        "intermediate": optuna.visualization.matplotlib.plot_intermediate_values,
    }
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:  # importances need two finished trials that differ
                figure = plot(study).figure
            except (ValueError, RuntimeError) as error:
                console.print(f"No {name} plot: {error}")
                continue
        figure.savefig(folder / f"{name}.png", dpi=120, bbox_inches="tight")
    console.print(f"Best of {len(study.trials)} trials: trial {best.number}, {best.value:.4g}")
    console.print(f"Report: {folder}/ (trials.csv, trials.md, best.json, *.png)", soft_wrap=True)
    console.print(f"Reproduce: {command}", soft_wrap=True, markup=False)


if __name__ == "__main__":
    main()
