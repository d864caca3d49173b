#!/usr/bin/python3
"""Twisted's Deferred doing the same operations as bench/exp_deferred.c.

Run by braid-bench (experiment `deferred`) with Debian's python3-twisted:
    twisted_deferred.py OP=ITERATIONS ...
prints one line per op: "OP NS_PER_OP". Each op is timed over ITERATIONS
repetitions after a warm-up of a tenth as many; garbage collection stays on,
as in any Twisted program (it is how Twisted frees Deferreds). The callback
is a plain function returning its argument, as in the C version.
"""
import sys
import time

from twisted.internet import defer

D = defer.Deferred


def passthru(r):
    return r


def ret_arg(_, x):
    return x


def op_fired_add1(n):
    succeed = defer.succeed
    for i in range(n):
        d = succeed(i)
        d.addCallback(passthru)


def make_create_add(k):
    def op(n):
        for i in range(n):
            d = D()
            for _ in range(k):
                d.addCallback(passthru)
            d.callback(i)
    return op


def op_chain(n):
    for i in range(n):
        inner = D()
        outer = D()
        outer.addCallback(ret_arg, inner)
        outer.callback(None)     # outer now waits on inner
        inner.callback(i)        # outer resumes with i


def make_gather(m):
    def op(n):
        for _ in range(n):
            ds = [D() for _ in range(m)]
            g = defer.gatherResults(ds)
            for j, d in enumerate(ds):
                d.callback(j)
            g.addCallback(passthru)
    return op


OPS = {
    "fired_add1": op_fired_add1,
    "create_add1_fire": make_create_add(1),
    "create_add2_fire": make_create_add(2),
    "create_add4_fire": make_create_add(4),
    "create_add100_fire": make_create_add(100),
    "chain": op_chain,
    "gather1000": make_gather(1000),
}


def main(argv):
    for arg in argv:
        name, _, count = arg.partition("=")
        n = int(count)
        fn = OPS[name]
        fn(max(1, n // 10))                     # warm-up
        t0 = time.perf_counter_ns()
        fn(n)
        t1 = time.perf_counter_ns()
        print(name, (t1 - t0) / n, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
