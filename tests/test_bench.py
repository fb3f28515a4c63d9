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


def test_the_seed_sweep_help_runs():
    out = run_script("bench/seeds.py", "--help", timeout=60)
    assert out.returncode == 0 and "--onednn" in out.stdout and "--physics" in out.stdout


def test_the_seed_sweep_scores_a_run_and_summarises_the_targets(tmp_path):
    """One demo folder's history, checkpoints and tester table scored as the sweep does."""
    import sys

    import numpy as np
    import pandas as pd
    from conftest import ROOT, results_frame

    sys.path.insert(0, str(ROOT / "bench"))
    import seeds

    run = tmp_path / "demo_seed0_onednn_on"
    models = run / "demo_trainer_outputs" / "models"
    models.mkdir(parents=True)
    pd.DataFrame({"val_mae": [0.3, 0.2, 0.25]}).to_csv(run / "demo_trainer_outputs" /
                                                        "history.csv", index=False)
    for epoch in (1, 2):
        (models / f"demo_trainer_{epoch:03d}.weights.h5").write_bytes(b"")
    (run / "demo_tester_outputs").mkdir()
    table = results_frame(n=8)
    rng = np.random.default_rng(0)
    table["station_lat"] += rng.normal(0, 0.3, 8)   # a constant offset cannot fit them all
    table["pred_event_lat"] += rng.normal(0, 0.1, 8)
    table.to_csv(run / "demo_tester_outputs" / "X_test_results.csv", index=False)
    kept = seeds.checkpoint_row(str(run))
    assert kept == {"epoch_kept": 2, "val_mae_kept": 0.2, "epoch_best_val_mae": 2,
                    "val_mae_best": 0.2}
    row = seeds.score(str(run))
    assert row["epi_mae_km"] > 0 and np.isfinite(row["epi_ratio"])
    table = pd.DataFrame([{**kept, **row}, {**kept, **row, "epi_ratio": 0.9,
                                            "val_mae_kept": 0.3}])
    lines = seeds.summary(table)
    assert "max 0.900" in lines[0] and "1 of 2" in lines[2]
