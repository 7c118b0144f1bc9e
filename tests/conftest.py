"""Tests read the committed Fashion-MNIST subset (tests/fixtures/fashion-mnist), never a system
package: set here, before any test runs, so subprocesses (CLIs, Beam workers, DDP ranks)
inherit it too."""

import os
from pathlib import Path

FIXTURE_DATA = Path(__file__).parent / "fixtures" / "fashion-mnist"
os.environ["ADVMIX_DATA_ROOT"] = str(FIXTURE_DATA)
