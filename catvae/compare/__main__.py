"""``python -m catvae.compare``: ``catvae compare ...``, and the entry point of one run of a sweep."""

import sys

if len(sys.argv) == 3 and sys.argv[1] == "--_run":
    from .execute import run_child

    sys.exit(run_child(sys.argv[2]))
elif len(sys.argv) == 3 and sys.argv[1] == "--_group":
    from .batched import group_main

    sys.exit(group_main(sys.argv[2]))
else:
    from ..cli import main

    sys.exit(main(["compare", *sys.argv[1:]]))
