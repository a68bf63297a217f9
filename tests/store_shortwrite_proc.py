"""Helper process for the store tests: a writer whose disk "fills up" mid-record (a real file-size limit).

It writes `before` samples, then lowers RLIMIT_FSIZE to a few bytes past the manifest's end, so the
next record line is cut short by the kernel (a real short write), then tries two more samples.
Prints one line per event: 'ok <seed>' or 'error <message>'.
"""

from __future__ import annotations

import resource
import signal
import sys

from synthaug.store import MANIFEST, StoreError, StoreWriter
from synthaug.toy.world import render_seed


def main() -> None:
    store, segment, before = sys.argv[1], sys.argv[2], int(sys.argv[3])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then returns short instead of killing
    with StoreWriter(store, segment=segment, fsync=False) as writer:
        for seed in range(before):
            writer.add(render_seed(seed, 32).to_sample())
            print("ok", seed, flush=True)
        size = (writer.dir / MANIFEST).stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, resource.RLIM_INFINITY))
        for seed in range(before, before + 2):
            try:
                writer.add(render_seed(seed, 32).to_sample())
                print("ok", seed, flush=True)
            except (StoreError, OSError) as err:
                print("error", err, flush=True)


if __name__ == "__main__":
    main()
