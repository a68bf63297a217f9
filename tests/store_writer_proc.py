"""Helper process for the store tests: writes toy samples seed after seed into its own segment."""

from __future__ import annotations

import sys

from synthaug.store import StoreWriter
from synthaug.toy.world import render_seed


def main() -> None:
    store, segment, first, count, fsync = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    with StoreWriter(store, segment=segment, fsync=fsync == "1") as writer:
        for seed in range(first, first + count):
            writer.add(render_seed(seed, 32).to_sample())
            print(seed, flush=True)


if __name__ == "__main__":
    main()
