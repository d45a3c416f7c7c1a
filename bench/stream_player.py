#!/usr/bin/env python3
"""Readers for bench/stream.sh.

    stream_player.py player FILE   # read 10 MiB at 0, seek to 150 MiB, read 10 MiB
    stream_player.py seq FILE MiB  # one long sequential read from 0

Prints one line of JSON. Times start at the read (after open, or at the
seek), in seconds. Like a player probing a header, each span starts with a
4 KiB read, then reads 256 KiB at a time: the time of that first read is the
time to first byte; the time until 256 KiB have arrived is reported too.
"player" reports both for the start and for the seek; "seq" reports them and
the throughput after the first 256 KiB (so TTFB does not count against the
link share).
"""

import json
import os
import sys
import time

PROBE = 4 * 1024  # the first read of a span
READ = 256 * 1024  # then a player's read size


def read_span(f, off, n):
    """-> (first byte s, first 256 KiB s, bytes, total s, bytes at 256 KiB)"""
    os.lseek(f, off, os.SEEK_SET)
    t0 = time.monotonic()
    first = t256 = None
    got = got256 = 0
    while got < n:
        b = os.read(f, min(PROBE if got == 0 else READ, n - got))
        if not b:
            break
        got += len(b)
        if first is None:
            first = time.monotonic() - t0
        if t256 is None and got >= READ:
            t256 = time.monotonic() - t0
            got256 = got
    return first, t256, got, time.monotonic() - t0, got256


def main():
    mode, path = sys.argv[1], sys.argv[2]
    f = os.open(path, os.O_RDONLY)
    if mode == "player":
        ttfb, t256, n1, t1, _ = read_span(f, 0, 10 << 20)
        seek, s256, n2, t2, _ = read_span(f, 150 << 20, 10 << 20)
        out = {"ttfb": ttfb, "ttfb256": t256, "seek": seek, "seek256": s256,
               "read": n1 + n2, "secs": t1 + t2}
    elif mode == "seq":
        n = int(sys.argv[3]) << 20
        ttfb, t256, got, t, got256 = read_span(f, 0, n)
        steady = (got - got256) / max(t - t256, 1e-9)
        out = {"ttfb": ttfb, "ttfb256": t256, "read": got, "secs": t,
               "steady_Bps": steady}
    else:
        sys.exit(f"unknown mode {mode}")
    os.close(f)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
