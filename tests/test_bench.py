"""bench/throughput.py: the benchmark's command line."""

import subprocess
import sys

from conftest import ROOT


def test_benchmark_help_runs():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--precision" in out.stdout and "(a)" in out.stdout
