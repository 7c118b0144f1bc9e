"""The Docker images' recipes, checked without a Docker engine (none here or in CI).

What can be checked without building: every package the project installs is copied into both
images, every COPY source exists, and the documented Dataflow build pins the worker's Python
and Beam to the launcher's (Dataflow refuses a mismatch) through the ARGs its FROM line uses.
"""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import apache_beam
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))


def _copies(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            sources += line.split()[1:-1]
    return sources


def test_there_are_a_worker_and_a_trainer_image():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.dataflow", "Dockerfile.trainer"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_package_is_copied_and_every_source_exists(dockerfile):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = _copies(dockerfile)
    assert packages <= set(copied)
    assert all((ROOT / source).exists() for source in copied)


def test_documented_dataflow_build_pins_the_launchers_python_and_beam():
    dockerfile = (ROOT / "docker" / "Dockerfile.dataflow").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    assert base == "apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}"
    doc = (ROOT / "docs" / "dataflow.md").read_text()
    build = doc[doc.index("docker build -f docker/Dockerfile.dataflow") :].split("\n\n")[0]
    args = dict(re.findall(r"--build-arg (\w+)=\"\$\(python -c '(.+?)'\)\"", build))
    assert set(args) == {"PYTHON_VERSION", "BEAM_VERSION"}
    run = lambda code: subprocess.check_output([sys.executable, "-c", code], text=True).strip()  # noqa: E731
    assert run(args["PYTHON_VERSION"]) == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert run(args["BEAM_VERSION"]) == apache_beam.__version__
