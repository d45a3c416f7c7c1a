#!/usr/bin/env python3
"""Readers for bench/stream.sh.

    stream_player.py player FILE   # read 10 MiB at 0, seek to 150 MiB, read 10 MiB
    stream_player.py seq FILE MiB  # one long sequential read from 0

Prints one line of JSON. Times start at the read (after open), in seconds.
"player" reports the time to the first byte, the time from the seek to its
first byte, and the throughput of the two spans; "seq" reports the time to
the first byte and the throughput after it (bytes after the first read /
time after the first byte), so TTFB does not count against the link share.
"""

import json
import os
import sys
import time

READ = 256 * 1024  # a player's read size


def read_span(f, off, n):
    os.lseek(f, off, os.SEEK_SET)
    t0 = time.monotonic()
    first = None
    first_len = 0
    got = 0
    while got < n:
        b = os.read(f, min(READ, n - got))
        if not b:
            break
        if first is None:
            first = time.monotonic() - t0
            first_len = len(b)
        got += len(b)
    return first, first_len, got, time.monotonic() - t0


def main():
    mode, path = sys.argv[1], sys.argv[2]
    f = os.open(path, os.O_RDONLY)
    if mode == "player":
        ttfb, _, n1, t1 = read_span(f, 0, 10 << 20)
        seek, _, n2, t2 = read_span(f, 150 << 20, 10 << 20)
        out = {"ttfb": ttfb, "seek": seek, "read": n1 + n2, "secs": t1 + t2}
    elif mode == "seq":
        n = int(sys.argv[3]) << 20
        ttfb, first_len, got, t = read_span(f, 0, n)
        steady = (got - first_len) / max(t - ttfb, 1e-9)
        out = {"ttfb": ttfb, "read": got, "secs": t, "steady_Bps": steady}
    else:
        sys.exit(f"unknown mode {mode}")
    os.close(f)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
