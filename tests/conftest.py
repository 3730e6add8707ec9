import catvae  # noqa: F401, I001  (first: it sets MKL_CBWR before torch is loaded, see catvae/__init__.py)
import os
from pathlib import Path

import lightning as L
import pytest

ROOT = Path(__file__).resolve().parents[1]
_SHARED = ROOT.parent / "shared" / "data"
os.environ.setdefault("CATVAE_DATA_DIR", str(_SHARED if _SHARED.is_dir() else ROOT / "data"))
DATA = Path(os.environ["CATVAE_DATA_DIR"])
HAS_MNIST = (DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()

needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason=f"MNIST files not found under {DATA}/MNIST/raw")


class RecordTrainer(L.Callback):
    """A callback that remembers the Trainer it ran in (for CLI tests: ``--trainer.callbacks+=conftest.RecordTrainer``)."""

    last = None

    def setup(self, trainer, pl_module, stage):
        RecordTrainer.last = trainer


@pytest.fixture(scope="session")
def quick_sweep(tmp_path_factory):
    """The quick spec's unbatched sweep with one seed (``catvae compare configs/compare/quick.yaml --quick --seeds 0
    --parallel 2``), run once for the tests that read it (about 45 s on 2 cores): its results folder."""
    from catvae.cli import main

    out = tmp_path_factory.mktemp("quick_sweep") / "cmp"
    assert main(["compare", str(ROOT / "configs" / "compare" / "quick.yaml"), "--quick", "--seeds", "0", "--out", str(out),
                 "--parallel", "2"]) == 0
    return out
