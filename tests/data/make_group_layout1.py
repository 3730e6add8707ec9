"""Write ``tests/data/group_layout1``: a batched group stopped by SIGTERM at step 13 of 25, with the checkpoint
layout of commit 8b557a4 (before the group became the VAE's own layers). Run it in a checkout of that commit,
with MNIST under ``CATVAE_DATA_DIR``, from the checkout's root:

    git worktree add /tmp/old 8b557a4 && cd /tmp/old && python tests/data/make_group_layout1.py OUT

then copy ``OUT/group/checkpoints`` and ``OUT/group/group.json`` here. The arguments are
``test_batched._tiny_args`` plus ``LAYOUT1_ARGS`` (a 4-latent, 2-unit model: a 170 KB file).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: faults, test_batched

from faults import SignalAt  # noqa: E402
from lightning.pytorch.utilities.exceptions import SIGTERMException  # noqa: E402
from test_batched import LAYOUT1_ARGS, _tiny_args  # noqa: E402

from catvae.compare import batched as B  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    specs = [(0, "redge_cov"), (1, "gumbel"), (0, "rloo")]
    try:
        B.fit_group([_tiny_args(out, s, e, 25) + LAYOUT1_ARGS for s, e in specs], out / "group", "k",
                    callbacks=[SignalAt(13)])
    except SIGTERMException:
        print(f"stopped at step 13: {out / 'group'}")
