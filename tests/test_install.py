"""The package works when installed from its wheel, away from the source tree: the configs ship inside it, and
``sb3-av train`` / ``sb3-av evaluate`` / ``python -m sb3_av`` run with them.

The wheel is built offline (the installed setuptools, ``--no-build-isolation``) from a copy of the files a build
reads, and installed without dependencies into a fresh venv that sees the test interpreter's installed packages
through a ``.pth`` line: nothing is downloaded (torch included), the whole test takes about a minute on 2 cores.
The checkout's own editable install is not visible there: a ``.pth`` line adds a folder to ``sys.path`` without
running that folder's ``.pth`` files (where the editable finder is installed).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


def _run(cmd: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert result.returncode == 0, f"{cmd}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def _build_wheel(tmp_path: Path) -> Path:
    version = importlib.metadata.version("setuptools")
    assert int(version.split(".")[0]) >= 77, f"setuptools {version} < 77 cannot build sb3-av: bash scripts/setup.sh"
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "sb3_av", source / "sb3_av", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, source], tmp_path)
    (wheel,) = wheels.glob("sb3_av-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    (site,) = (venv / "lib").glob("python3.*/site-packages")
    (site / "sb3av_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # --ignore-installed: the checkout's editable sb3-av is visible to pip's metadata scan; install beside it.
    pip = [venv / "bin" / "python", "-m", "pip"]
    _run([*pip, "install", "-q", "--no-deps", "--no-index", "--ignore-installed", wheel], tmp_path)
    return venv


@pytest.mark.slow
def test_the_installed_wheel_trains_and_evaluates_with_its_shipped_configs(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"sb3_av/configs/{algo}.yml" for algo in ("td3", "ddpg", "sac", "tqc")} <= names
    venv = _fresh_venv(tmp_path, wheel)
    work = tmp_path / "work"  # no checkout anywhere near: configs/ or sb3_av/ here would hide a packaging bug
    work.mkdir()
    where = _run([venv / "bin" / "python", "-c", "import sb3_av, torch; print(sb3_av.__file__)"], work).stdout.strip()
    installed = Path(where).parent
    assert installed.is_relative_to(venv), f"sb3_av imported from {where}, not from the wheel"

    result = _run(
        [venv / "bin" / "sb3-av", "train", "--algo", "td3", "--env", "LiteScenario0-v0", "-n", "300", "--seed", "0",
         "-params", "learning_starts:250", "--env-kwargs", "max_steps:50", "--eval-freq", "-1", "-f", "logs"],
        work,
    )  # fmt: skip
    assert f"Loading hyperparameters from: {installed / 'configs' / 'td3.yml'} [LiteScenario0-v0]" in result.stdout
    run = work / "logs" / "td3" / "LiteScenario0-v0_1"
    assert (run / "LiteScenario0-v0.zip").is_file()
    progress = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert progress and progress[-1].startswith("step 300/300 (100%)") and "success" in progress[-1]

    _run([venv / "bin" / "sb3-av", "evaluate", run, "-n", "1", "--json", "metrics.json"], work)
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["env_kwargs"]["max_steps"] == 50, "the run's env kwargs"
    assert "train" in _run([venv / "bin" / "python", "-m", "sb3_av", "--help"], work).stdout
