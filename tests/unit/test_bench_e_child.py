"""Benchmark E compares pynetdicom's own association threads with discovery/reactor.py, each
in a fresh child process. Importing anything that imports discovery.dimse installs reactor.py
process-wide, so a child that imported it would measure reactor.py in both columns (it did
once: bench.b_limit began to import discovery.dimse, and E showed ratios near 1)."""

from __future__ import annotations

import subprocess
import sys

from demo.cluster import ROOT


def test_the_e_child_imports_no_reactor_until_it_chooses() -> None:
    code = "import sys, bench.e_polling; print('discovery.reactor' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "False"
