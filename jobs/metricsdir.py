"""Where forked processes keep their Prometheus values. Set before ``prometheus_client`` is
first imported (it picks its storage at import), so this module must not import it."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def use_multiprocess_dir(folder: Path) -> None:
    """Point this process and its children at an empty folder for their metric values."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client is already imported: set the multiprocess folder before it is")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(folder)
