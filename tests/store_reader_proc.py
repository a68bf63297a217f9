"""Helper process for the store tests: refreshes and reads while writers write; checks every sample bit-exact."""

from __future__ import annotations

import sys
import time

import numpy as np

from synthaug.store import SampleStore
from synthaug.toy.world import render_seed


def main() -> None:
    path, expected, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
    store = None
    checked = set()
    while time.monotonic() < deadline:
        try:
            store = store or SampleStore(path)
        except Exception:  # store.json not there yet
            time.sleep(0.05)
            continue
        store.refresh()
        for i in range(len(store)):
            rec = store.records[i]
            if rec["id"] in checked:
                continue
            sample = store.read(i)  # must never raise: only complete samples are visible
            truth = render_seed(sample.seed, 32)
            assert np.array_equal(sample.image, truth.image) and np.array_equal(sample.mask, truth.semantic), rec["id"]
            checked.add(rec["id"])
        if len(checked) >= expected:
            break
        time.sleep(0.02)
    print(len(checked), flush=True)


if __name__ == "__main__":
    main()
