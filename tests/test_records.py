"""A run records what it used (issue 27 §4): one HPARAMS session per run, test metrics at the trained step,
``hparams.yaml`` without LightningCLI's bookkeeping, ``versions.txt``, the resolved data folder."""

from __future__ import annotations

import os

import torch
import yaml
from conftest import DATA, ROOT, needs_mnist
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from catvae.cli import main

POLY = ["--config", str(ROOT / "configs" / "polynomial" / "p2.yaml"), "--data.init_args.steps_per_epoch=5",
        "--trainer.enable_model_summary=false", "--trainer.enable_progress_bar=false"]


def hparams_sessions(run_dir) -> int:
    count = 0
    for path in run_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            count += sum(v.tag == "_hparams_/session_start_info" for v in event.summary.value)
    return count


def test_a_resumed_and_tested_run_has_one_hparams_session_test_metrics_at_its_step_and_its_versions(tmp_path):
    runs = str(tmp_path / "runs")
    assert main(["fit", *POLY, "--runs_dir", runs, "--trainer.max_steps=6"]) == 0
    run_dir = next((tmp_path / "runs").glob("*/*/version_0"))
    assert hparams_sessions(run_dir) == 1
    assert main(["fit", *POLY, "--runs_dir", runs, "--trainer.max_steps=9", "--ckpt_path=last"]) == 0
    assert main(["test", *POLY, "--runs_dir", runs, "--ckpt_path=last"]) == 0
    assert hparams_sessions(run_dir) == 1 and len(list(run_dir.glob("events.out.tfevents.*"))) == 3
    events = EventAccumulator(str(run_dir)).Reload()
    tests = [t for t in events.Tags()["scalars"] if t.startswith("test/")]
    assert tests and all([e.step for e in events.Scalars(t)] == [9] for t in tests)
    assert "step" not in events.Tags()["scalars"]
    recorded = yaml.safe_load((run_dir / "hparams.yaml").read_text())
    assert "_instantiator" not in recorded and "estimator" in recorded
    blocks = (run_dir / "versions.txt").read_text().strip().split("\n\n")
    assert [b.splitlines()[0].split(",")[0] for b in blocks] == ["# catvae fit", "# catvae fit (resumed)", "# catvae test"]
    assert f"torch: {torch.__version__}" in blocks[0] and "lightning: " in blocks[0] and "catvae: " in blocks[0]


@needs_mnist
def test_config_yaml_records_the_data_folder_from_the_environment_and_versions_its_files(tmp_path, monkeypatch):
    monkeypatch.setenv("CATVAE_DATA_DIR", str(DATA))
    runs = tmp_path / "runs"
    assert main(["fit", "--config", str(ROOT / "configs/mnist/l48_k2.yaml"), "--model.estimator=st",
                 "--data.train_subset=200", "--data.batch_size=100", "--trainer.max_steps=2",
                 "--trainer.limit_val_batches=1", "--model.n_importance_samples=1", "--runs_dir", str(runs),
                 "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]) == 0
    run_dir = next(runs.glob("*/*/version_0"))
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["init_args"]["data_dir"] == str(DATA.resolve())
    text = (run_dir / "versions.txt").read_text()
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        size = os.path.getsize(DATA / "MNIST" / "raw" / name)
        assert f"data: {DATA.resolve() / 'MNIST' / 'raw' / name} ({size} bytes)" in text
