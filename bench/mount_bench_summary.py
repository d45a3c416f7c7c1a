#!/usr/bin/env python3
"""Median (min..max) of several bench/mount_bench.sh runs.

    bench/mount_bench_summary.py target/bench-results/mount-run5 target/bench-results/mount-run6 ...

Reads each run's results.tsv; prints per figure and system the median and the
range, then the strata ratios of the medians and the targets.
"""
import statistics
import sys
from pathlib import Path

ROWS = [
    ("write_fsync", "seq write + fsync, MB/s", True),
    ("write_store", "seq write until in store, MB/s", True),
    ("write_close", "seq write no fsync, until close, MB/s", True),
    ("write_nofsync_store", "seq write no fsync, until in store, MB/s", True),
    ("read_seq", "cold seq read, MB/s", True),
    ("randread_iops", "cold 4 KiB random read, IOPS", True),
    ("randread_lat_us", "  mean latency, us", False),
    ("small_close", "create small files, until close, files/s", True),
    ("small_store", "create small files, until in store, files/s", True),
    ("ls_lR_s", "ls -lR, cold remount, s", False),
    ("untar_close_s", "untar, until tar exits, s", False),
    ("untar_store_s", "untar, until in store, s", False),
    ("mount_s", "cold mount, s", False),
    ("peak_rss_mb", "daemon peak RSS, MB", False),
    ("daemon_cpu_s", "daemon CPU, s", False),
]
# The targets of the data-plane issue (9), and earlier ones against rclone:
# (figure, other system, threshold on strata's speed-up over it), or
# (figure, None, bound) for a bound on strata's own figure (lower is better).
TARGETS = [
    ("read_seq", "gocryptfs", 1.0, "cold seq read >= 1.0x gocryptfs (aim 1.2x)"),
    ("write_fsync", "gocryptfs", 1.0, "seq write with fsync >= 1.0x gocryptfs"),
    ("randread_iops", "gocryptfs", 1.0, "4 KiB random read >= 1.0x gocryptfs"),
    ("small_close", "gocryptfs", 1.0, "small creates, until close >= 1.0x gocryptfs"),
    ("ls_lR_s", "gocryptfs", 1.5, "ls -lR >= 1.5x gocryptfs (aim 2x)"),
    ("daemon_cpu_s", "gocryptfs", 1 / 1.2, "daemon CPU <= 1.2x gocryptfs' (shown: its/ours)"),
    ("peak_rss_mb", None, 150 * 1.048576, "daemon peak RSS <= 150 MiB (shown: MB)"),
    ("read_seq", "rclone", 2.5, "cold seq read >= 2.5x rclone"),
    ("small_store", "rclone", 5.0, "small-file creation until in store >= 5x rclone"),
]


def print_targets(v, rows):
    """The targets line by line; `v` maps (figure, system) to a value."""
    for k, o, t, text in TARGETS:
        a = v.get((k, "strata"))
        b = v.get((k, o)) if o else 1.0
        if not a or not b:
            print(f"  {text:50} n/a")
            continue
        if o is None:
            print(f"  {text:50} {a:6.1f}   {'PASS' if a <= t else 'MISS'}")
            continue
        hib = next(r[2] for r in rows if r[0] == k)
        r = a / b if hib else b / a
        print(f"  {text:50} {r:6.2f}x  {'PASS' if r >= t else 'MISS'}")


def fmt(x):
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.2f}"


def main():
    runs = [Path(a) for a in sys.argv[1:]]
    vals = {}
    systems = []
    for r in runs:
        for line in (r / "results.tsv").read_text().splitlines():
            k, s, x = line.split("\t")
            vals.setdefault((k, s), []).append(float(x))
            if s not in systems:
                systems.append(s)
    med = {k: statistics.median(v) for k, v in vals.items()}
    w = max(len(r[1]) for r in ROWS)
    print(f"{len(runs)} runs: " + " ".join(r.name for r in runs))
    print(f"median (min..max)\n{'':{w}}  " + "".join(f"{s:>24}" for s in systems))
    for k, label, _ in ROWS:
        cells = []
        for s in systems:
            v = vals.get((k, s))
            cells.append(
                f"{'-':>24}" if not v else f"{fmt(med[(k, s)]) + ' (' + fmt(min(v)) + '..' + fmt(max(v)) + ')':>24}"
            )
        print(f"{label:{w}}  " + "".join(cells))
    others = [s for s in systems if s != "strata"]
    print(f"\nstrata vs others, medians (>1 = strata better)\n{'':{w}}  " + "".join(f"{'vs ' + o:>14}" for o in others))
    for k, label, hib in ROWS:
        cells = []
        for o in others:
            a, b = med.get((k, "strata")), med.get((k, o))
            if not a or not b:
                cells.append(f"{'-':>14}")
            else:
                cells.append(f"{(a / b if hib else b / a):>13.2f}x")
        print(f"{label:{w}}  " + "".join(cells))
    print("\nTargets (medians):")
    print_targets(med, ROWS)


if __name__ == "__main__":
    main()
