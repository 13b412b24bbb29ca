"""The run folder: what it keeps to rebuild a run, its lock, resume rules, corrupt checkpoints."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import tarfile
from importlib.metadata import distributions, version
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from lightseg import CONFIG_DIR
from lightseg.errors import LightsegError
from lightseg.runs import RunFolder, RunLock, snapshot
from lightseg.runs.record import write_run_info
from lightseg.train import check_sweep, train
from lightseg.utils.locks import held_by_live_process
from tests.conftest import FAST, make_config


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_a_dirty_tree_is_kept_whole_diff_new_files_and_packages(tmp_path, monkeypatch):
    repo = tmp_path / "fork"
    (repo / "configs").mkdir(parents=True)
    (repo / "configs" / "train.yaml").write_text("seed: 1\n")
    (repo / ".gitignore").write_text("data/\n")
    git(repo, "init", "-q")
    git(repo, "-c", "user.email=a@b", "-c", "user.name=a", "add", ".")
    git(repo, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "start")
    (repo / "configs" / "train.yaml").write_text("seed: 2\n")  # a change to a tracked file
    (repo / "extensions").mkdir()
    (repo / "extensions" / "net.py").write_text("class Net: ...\n")  # a fork's new file
    (repo / "data").mkdir()
    (repo / "data" / "big.bin").write_bytes(b"x" * 100)  # ignored: not part of the code
    monkeypatch.setattr(snapshot, "REPOSITORY", repo)
    run = tmp_path / "run"
    run.mkdir()
    state = snapshot.git_state()
    assert state["dirty"] is True
    record = snapshot.save_snapshot(run, state)
    assert "+seed: 2" in (run / "git_diff.patch").read_text()
    with tarfile.open(run / "untracked.tar.gz") as archive:
        assert archive.getnames() == ["extensions/net.py"]
        member = archive.extractfile("extensions/net.py")
        assert member.read() == b"class Net: ...\n"
    assert record["untracked_files"] == ["extensions/net.py"]
    packages = (run / "packages.txt").read_text().splitlines()
    assert f"torch=={version('torch')}" in packages


def test_packages_txt_lists_what_pip_installed_not_setuptools_vendored_copies():
    import setuptools  # noqa: F401  (puts setuptools/_vendor on sys.path)

    def only_vendored(name: str) -> bool:
        return all("_vendor" in str(d.locate_file("")) for d in distributions(name=name))

    vendored = {d.metadata["Name"] for d in distributions() if only_vendored(d.metadata["Name"])}
    if not vendored:
        pytest.skip("this setuptools vendors no distributions")
    snapshot.package_versions.cache_clear()
    try:
        listed = snapshot.package_versions()
    finally:
        snapshot.package_versions.cache_clear()
    assert listed["torch"] == version("torch")
    assert not vendored & set(listed), vendored & set(listed)


def test_a_full_disk_keeps_the_last_whole_run_info(tmp_path, monkeypatch):
    write_run_info(tmp_path, {"status": "running"})
    original = Path.write_text

    def disk_fills(path, text, *args, **kwargs):
        original(path, text[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", disk_fills)
    with pytest.raises(LightsegError, match=f"run_info.json could not be written in '{tmp_path}'"):
        write_run_info(tmp_path, {"status": "finished"})
    monkeypatch.undo()
    assert RunFolder(tmp_path).info() == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["run_info.json"]


def readme_rebuild_recipe() -> list[str]:
    """The shell lines of the README's "To rebuild a run elsewhere" block."""
    text = (Path(CONFIG_DIR).parent / "README.md").read_text()
    block = text.split("To rebuild a run elsewhere", 1)[1].split("```bash\n", 1)[1]
    return block.split("```", 1)[0].strip().splitlines()


@pytest.mark.parametrize("tracked_change", [False, True])
def test_the_readme_recipe_rebuilds_a_run_on_a_fresh_clone(tmp_path, monkeypatch, tracked_change):
    repo = tmp_path / "fork"
    (repo / "configs").mkdir(parents=True)
    (repo / "configs" / "train.yaml").write_text("seed: 1\n")
    git(repo, "init", "-q")
    git(repo, "-c", "user.email=a@b", "-c", "user.name=a", "add", ".")
    git(repo, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "start")
    (repo / "extensions").mkdir()
    (repo / "extensions" / "net.py").write_text("class Net: ...\n")  # untracked only, or also:
    if tracked_change:
        (repo / "configs" / "train.yaml").write_text("seed: 2\n")
    monkeypatch.setattr(snapshot, "REPOSITORY", repo)
    run = tmp_path / "run"
    run.mkdir()
    state = snapshot.git_state()
    record = snapshot.save_snapshot(run, state)
    (run / "run_info.json").write_text(json.dumps({"git": state, "files": record}))

    lines = readme_rebuild_recipe()
    assert lines[-1].startswith("pip install -r ")
    python = Path(sys.executable).parent
    env = {
        **os.environ,
        "RUN": str(run),
        "REPO": str(repo),
        "PATH": f"{python}:{os.environ['PATH']}",
    }
    script = "set -e\n" + "\n".join(lines[:-1])  # the pip line: below, offline
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    rebuilt = tmp_path / "rebuilt"
    assert (rebuilt / "configs" / "train.yaml").read_text() == f"seed: {1 + tracked_change}\n"
    assert (rebuilt / "extensions" / "net.py").read_text() == "class Net: ...\n"
    assert ("git_diff" in record) == (run / "git_diff.patch").exists() == tracked_change

    packages = (run / "packages.txt").read_text().splitlines()
    assert not [p for p in packages if p.lower().startswith("lightseg==")]  # no index has it
    assert any(p.startswith("# lightseg ") for p in packages)
    install = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index"]
    resolved = subprocess.run([*install, "-r", str(run / "packages.txt")], capture_output=True)
    assert resolved.returncode == 0, resolved.stderr.decode()[-2000:]


def test_the_lock_tells_live_from_dead(tmp_path):
    assert held_by_live_process(tmp_path) is None
    with RunLock(tmp_path):
        owner = held_by_live_process(tmp_path)
        assert owner["pid"] == __import__("os").getpid()
        with pytest.raises(LightsegError, match="in use by another training process"):
            RunLock(tmp_path).acquire()
    assert held_by_live_process(tmp_path) is None  # released
    code = f"from lightseg.runs import RunLock; lock = RunLock({str(tmp_path)!r}); lock.acquire()"
    subprocess.run([sys.executable, "-c", code], check=True)  # a process that never releases
    assert held_by_live_process(tmp_path) is None  # its end released the lock
    with RunLock(tmp_path) as lock:  # taken over
        assert lock.owner["pid"] == __import__("os").getpid()


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=run", *overrides])


def test_a_torn_last_checkpoint_fails_the_run_with_one_paragraph(tmp_path, data_dir):
    cfg = make_config(tmp_path, "experiment=demo", *FAST, "data.image_size=64", data_dir=data_dir)
    cfg.trainer.fast_dev_run = False
    cfg.trainer.max_epochs = 1
    cfg.trainer.limit_train_batches = 1
    cfg.trainer.limit_val_batches = 1
    cfg.trainer.limit_test_batches = 1
    train(cfg)
    run = RunFolder(tmp_path / "run")
    run.metrics.unlink()  # as if it had been killed before the end
    run.last.write_bytes(run.last.read_bytes()[:1000])  # and its last.ckpt cut off in a copy
    cfg.ckpt_path = "last"
    with pytest.raises(LightsegError, match=r"last.ckpt' is damaged"):
        train(cfg)
    assert run.status == "failed" and "damaged" in run.info()["message"]
    best_only = make_config(tmp_path / "b", "experiment=demo", *FAST, data_dir=data_dir)
    best_only.ckpt_path = str(run.best)
    with pytest.raises(LightsegError, match="holds the weights only"):
        train(best_only)


def test_a_corrupt_checkpoint_from_the_command_line_is_one_paragraph(tmp_path):
    torn = tmp_path / "model.ckpt"
    buffer = io.BytesIO()
    torch.save({"state_dict": {}}, buffer)
    torn.write_bytes(buffer.getvalue()[:-40])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightseg.train",
            "experiment=demo",
            f"ckpt_path={torn}",
            f"paths.log_dir={tmp_path / 'logs'}",
            "print_config=false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "is damaged" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "logs").rglob("config.yaml"))  # no run was started


def test_a_sweep_with_multi_process_ddp_is_refused():
    cfg = compose_train("trainer=ddp", "trainer.devices=4")
    with pytest.raises(LightsegError, match="submitit"):
        check_sweep(cfg)
    check_sweep(compose_train("trainer=ddp_sim"))  # spawned processes: fine


def test_run_info_records_owner_command_and_versions(tmp_path, data_dir):
    cfg = make_config(tmp_path, "experiment=demo", *FAST, "data.image_size=64", data_dir=data_dir)
    train(cfg)
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["status"] == "finished"
    assert {"host", "pid", "slurm_job_id", "since"} <= info["owner"].keys()
    assert info["command"].startswith("python -m lightseg.train")
    assert info["versions"]["torch"] == version("torch")
    assert (tmp_path / "run" / "packages.txt").is_file()
