"""Helper process for the store tests: writes toy samples seed after seed into its own segment.

Arguments: STORE SEGMENT FIRST_SEED COUNT FSYNC(0|1) [PAUSE_S]; prints each seed once its record is committed.
"""

from __future__ import annotations

import sys
import time

from synthaug.store import StoreWriter
from synthaug.toy.world import render_seed


def main() -> None:
    store, segment, first, count, fsync = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    pause = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0  # seconds between samples (keeps stores small)
    with StoreWriter(store, segment=segment, fsync=fsync == "1") as writer:
        for seed in range(first, first + count):
            writer.add(render_seed(seed, 32).to_sample())
            print(seed, flush=True)
            time.sleep(pause)


if __name__ == "__main__":
    main()
