"""The experiment of "Why deferToThread is so slow?" (Twisted-Python list,
2016) in Twisted, for braid-bench's `pool` experiment.

f(x) = x + 1 runs in a dedicated twisted.python.threadpool.ThreadPool via
deferToThreadPool (the advice given in that thread: not the reactor's
shared pool); `load` callers on the reactor thread each issue their next
call when the previous result arrives. Plain Deferred callbacks (no
inlineCallbacks, which only adds overhead). Prints the elapsed nanoseconds
of the measured round (after an untimed warm-up round).

usage: twisted_pool.py --threads T --load L --calls N [--warm W]
"""
import argparse
import sys
import time

from twisted.internet import defer, reactor, threads
from twisted.python.threadpool import ThreadPool


def f(x):
    return x + 1


def caller(pool, calls):
    done = defer.Deferred()
    state = {"left": calls, "x": 0}

    def got(r):
        if r != state["x"] + 1:
            raise SystemExit("wrong result")
        state["x"] = r
        state["left"] -= 1
        if state["left"] > 0:
            threads.deferToThreadPool(reactor, pool, f, r).addCallback(got)
        else:
            done.callback(state["x"])

    threads.deferToThreadPool(reactor, pool, f, 0).addCallback(got)
    return done


def round_(pool, load, calls):
    return defer.gatherResults([caller(pool, calls) for _ in range(load)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--load", type=int, default=1)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--warm", type=int, default=100)
    a = ap.parse_args()
    pool = ThreadPool(minthreads=a.threads, maxthreads=a.threads, name="bench")
    pool.start()
    out = {}

    @defer.inlineCallbacks
    def go():
        try:
            yield round_(pool, a.load, max(1, a.warm))
            t0 = time.monotonic_ns()
            results = yield round_(pool, a.load, a.calls)
            out["ns"] = time.monotonic_ns() - t0
            if any(r != a.calls for r in results):
                raise SystemExit("wrong total")
        finally:
            pool.stop()
            reactor.stop()

    reactor.callWhenRunning(go)
    reactor.run()
    if "ns" not in out:
        return 1
    print(out["ns"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
