#!/usr/bin/env python
"""Run every paper experiment in configs/experiment/ with a budget and write REPRODUCTION.md.

    python scripts/reproduce.py --budget smoke                # minutes: wiring check
    python scripts/reproduce.py --budget cpu --jobs 2         # the toy experiments on 2 CPU cores
    python scripts/reproduce.py --budget full data.root=/data # GPU: the paper's budgets incl. the image table
    python scripts/reproduce.py --budget smoke --only 'reflection_*' --report /tmp/R.md

Same as `nodex reproduce ...`; the logic lives in nodex/paper/reproduce.py (budgets: BUDGETS there).
"""

import sys

from nodex.paper.reproduce import reproduce_main

if __name__ == "__main__":
    sys.exit(reproduce_main(sys.argv[1:]))
