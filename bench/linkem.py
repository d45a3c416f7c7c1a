#!/usr/bin/env python3
"""A user-space slow link for benchmarks (this kernel has no netem).

A TCP proxy on 127.0.0.1 that makes every connection through it share one
emulated link: a bandwidth limit in each direction (the bytes of all
connections queue in arrival order, like a bottleneck router) plus a fixed
one-way propagation delay, and one round trip before the first byte of a new
connection (the TCP handshake a real link would cost). It counts the payload
bytes it delivers per forward, so "bytes over the link" is measured the same
way for every system under test (counted when a byte has been serialised
onto the link, whether or not the receiver is still there to take it).

    linkem.py --rate 20mbit --delay-ms 25 --forward 9001:8921 [--forward ...]
              [--stats FILE]

--forward LISTEN_PORT:TARGET_PORT (both on 127.0.0.1; may repeat; all
forwards share the one link). LINKEM_DEBUG=1 prints one line per closed
connection (times, bytes) to stderr. --stats FILE is rewritten (atomically) every
100 ms and at exit with JSON: {"LISTEN_PORT": {"down": N, "up": N,
"conns": N}, ...} where "down" is target -> client bytes.

A client that closes its connection stops the transfer one delay later (when
its FIN/RST would reach the server).

Model: a chunk read from one side departs when the link is free and has
been serialised at the rate (the reader waits for that, so the sender is
back-pressured instead of buffered without bound), and is written to the
other side one delay later. Reads are at most 16 KiB, so connections sharing
the link interleave finely.
"""

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import sys
import time

CHUNK = 16 * 1024
SLACK = 0.004


def parse_rate(s):
    m = re.fullmatch(r"([0-9.]+)\s*([kmg]?)(bit|b|byte)?", s.strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(f"bad rate {s!r} (e.g. 20mbit, 2.5mb)")
    n = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
    unit = m.group(3) or "bit"
    return n / 8 if unit == "bit" else n


class Link:
    """One direction of the link: a FIFO serialiser at `rate` bytes/s."""

    def __init__(self, rate):
        self.rate = rate
        self.free = 0.0  # monotonic time the link is free again

    def depart(self, n, now):
        # A reader woken a little late (timer slack) has not left the link
        # idle: up to SLACK of lateness is absorbed, longer gaps are idle time.
        start = max(now - SLACK, self.free)
        self.free = start + n / self.rate
        return self.free


class Counter:
    def __init__(self):
        self.down = 0
        self.up = 0
        self.conns = 0


async def pump(reader, writer, link, delay, not_before, counts, attr, on_eof=None):
    """Move bytes reader -> writer through `link`, adding them to `attr` of
    every counter in `counts`; call on_eof() when the reader side closes."""
    q = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def deliver():
        try:
            while True:
                at, data = await q.get()
                wait = at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return

    out = asyncio.ensure_future(deliver())
    try:
        while True:
            try:
                data = await reader.read(CHUNK)
            except (ConnectionError, OSError):
                data = b""
            now = loop.time()
            if not data:
                q.put_nowait((max(now, not_before) + delay, None))
                if on_eof is not None:
                    on_eof()
                break
            dep = link.depart(len(data), now)
            wait = dep - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # serialisation: back-pressure
            # counted once on the link (what a data plan bills), even if the
            # receiver hangs up before it arrives
            for c in counts:
                setattr(c, attr, getattr(c, attr) + len(data))
            q.put_nowait((max(dep, not_before) + delay, data))
            if out.done():
                break
        await out
    finally:
        out.cancel()


async def handle(client_r, client_w, target, links, delay, count):
    loop = asyncio.get_running_loop()
    accepted = loop.time()
    count.conns += 1
    mine = Counter()
    counts = (count, mine)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # keep the sender close to the link: little hidden buffering in here
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 * 1024)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", target))
        up_r, up_w = await asyncio.open_connection(sock=sock)
    except OSError:
        client_w.close()
        return
    rtt = 2 * delay
    # the client's first bytes could only leave after the handshake (1 RTT)
    down = asyncio.ensure_future(
        pump(up_r, client_w, links[1], delay, accepted + rtt, counts, "down"))
    # A client that hangs up (e.g. a cancelled download) stops the server one
    # delay later, when its FIN/RST gets there: what the server sends until
    # then still crosses (and is counted on) the link, nothing after.
    up = pump(client_r, up_w, links[0], delay, accepted + rtt, counts, "up",
              on_eof=lambda: loop.call_later(delay, down.cancel))
    try:
        await asyncio.gather(up, down, return_exceptions=True)
    except asyncio.CancelledError:
        pass
    for w in (up_w, client_w):
        try:
            w.close()
        except Exception:
            pass
    if os.environ.get("LINKEM_DEBUG"):
        print(f"conn open {accepted:.3f} closed {loop.time():.3f} "
              f"down {mine.down} up {mine.up}", file=sys.stderr, flush=True)


def write_stats(path, counters):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({str(p): vars(c) for p, c in counters.items()}, f)
    os.replace(tmp, path)


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=parse_rate, required=True)
    ap.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay")
    ap.add_argument("--forward", action="append", required=True)
    ap.add_argument("--stats")
    args = ap.parse_args()
    delay = args.delay_ms / 1000
    links = (Link(args.rate), Link(args.rate))  # up, down
    counters = {}
    servers = []
    for fw in args.forward:
        lp, tp = (int(x) for x in fw.split(":"))
        c = counters[lp] = Counter()
        h = lambda r, w, tp=tp, c=c: handle(r, w, tp, links, delay, c)
        servers.append(await asyncio.start_server(h, "127.0.0.1", lp))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    print("linkem ready", flush=True)
    while not stop.is_set():
        if args.stats:
            write_stats(args.stats, counters)
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except asyncio.TimeoutError:
            pass
    if args.stats:
        write_stats(args.stats, counters)
    for s in servers:
        s.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
