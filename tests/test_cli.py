"""The advmix command as a user runs it: subprocess, real exit codes, stderr text."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def advmix(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_the_command_tree():
    result = advmix("--help")
    assert result.returncode == 0
    assert "data" in result.stdout


def test_preview_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    result = advmix(
        "data", "preview", "--dataset", "cfmnist:random", "--out", str(out), "--count", "20"
    )
    assert result.returncode == 0, result.stderr
    image = Image.open(out)
    assert image.size == (10 * 34 + 2, 2 * 34 + 2)
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    bright = pixels[pixels.max(axis=1) > 64]
    assert len(np.unique(bright, axis=0)) > 50  # many distinct colours, not gray


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "preview", "--dataset", "cfmnist:valid", "--out", "x.png"], "unknown split"),
        (
            ["data", "preview", "--dataset", "cfmnist:train?sigma=x", "--out", "x.png"],
            "not a number",
        ),
        (
            ["data", "preview", "--dataset", "cfmnist:iid", "--out", "x.png", "--count", "0"],
            "--count",
        ),
        (["data", "preview", "--dataset", "cfmnist:iid"], "Missing option '--out'"),
        (["data", "nonsense"], "No such command"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message):
    result = advmix(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1 and message in error_lines[0]


def test_missing_data_root_exits_1_with_one_line(tmp_path):
    result = advmix(
        "data", "preview", "--dataset", "cfmnist:iid", "--out", str(tmp_path / "g.png"),
        "--data-root", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error:") and "no train-images" in result.stderr
