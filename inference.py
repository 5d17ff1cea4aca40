"""Turn checkpoints into leaderboard submissions, or measure them on validation.

    python inference.py --checkpoint runs/quickstart/<run>/checkpoints/best.ckpt --split test --out submissions/q.csv
    python inference.py --checkpoint A.ckpt --checkpoint B.ckpt --weights 2 1 --tta hflip --split val
"""

import sys

from trashseg.inference.command import main

if __name__ == "__main__":
    sys.exit(main())
