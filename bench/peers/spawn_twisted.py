"""Twisted's side of braid-bench's `spawn` experiment: spawn /bin/true with
reactor.spawnProcess (fds 0-2 inherited, the environment inherited) and
wait for processEnded, N times, `par` at a time (a new spawn whenever one
ends), after N/10 untimed warm-up spawns. With --rss-mib, first touch that
many MiB of heap. Prints the elapsed nanoseconds of the measured round.

usage: spawn_twisted.py --par P --n N [--rss-mib M]
"""
import argparse
import os
import sys
import time

from twisted.internet import defer, protocol, reactor

TRUE = "/bin/true"


class Proc(protocol.ProcessProtocol):
    def __init__(self, state):
        self.state = state

    def processEnded(self, reason):
        st = self.state
        if reason.value.exitCode != 0:
            st["failed"] = True
        st["running"] -= 1
        st["done"] += 1
        spawn_more(st)


def spawn_more(st):
    while st["left"] > 0 and st["running"] < st["par"]:
        st["left"] -= 1
        st["running"] += 1
        reactor.spawnProcess(Proc(st), TRUE, [TRUE], env=os.environ, childFDs={0: 0, 1: 1, 2: 2})
    if st["running"] == 0 and st["left"] == 0 and not st["d"].called:
        st["d"].callback(st["done"])


def round_(par, n):
    st = {"left": n, "running": 0, "done": 0, "par": par, "failed": False, "d": defer.Deferred()}
    spawn_more(st)
    return st["d"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--par", type=int, default=1)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--rss-mib", type=int, default=0)
    a = ap.parse_args()
    heap = None
    if a.rss_mib > 0:
        heap = bytearray(a.rss_mib << 20)
        heap[::4096] = b"\x01" * len(range(0, len(heap), 4096))  # touch every page
    out = {}

    @defer.inlineCallbacks
    def go():
        try:
            yield round_(a.par, a.n // 10 + 1)
            t0 = time.monotonic_ns()
            done = yield round_(a.par, a.n)
            out["ns"] = time.monotonic_ns() - t0
            if done != a.n:
                raise SystemExit("wrong count")
        finally:
            reactor.stop()

    reactor.callWhenRunning(go)
    reactor.run()
    if "ns" not in out:
        return 1
    print(out["ns"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
