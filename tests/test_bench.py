"""The benchmarks' command lines."""

import pytest
from conftest import run_script


@pytest.mark.slow
def test_benchmark_help_runs():
    out = run_script("bench/throughput.py", "--help", timeout=60)
    assert out.returncode == 0 and "--precision" in out.stdout and "(a)" in out.stdout


def test_the_aleatoric_benchmark_help_runs():
    out = run_script("bench/aleatoric.py", "--help", timeout=60)
    assert out.returncode == 0 and "--number_of_sampling" in out.stdout and "--figure" in out.stdout
