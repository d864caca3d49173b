"""Python's side of braid-bench's `workers` experiment: what Python users
pick for worker processes, multiprocessing.Pool.apply_async.

`load` callers each issue their next call from the previous call's
callback (run in the pool's result-handler thread); the call carries x,
the reply is x+1, checked. Jobs: trivial (reply at once) and cpu-1ms (spin
until 1 ms of the worker's CPU time is used, time.thread_time). An untimed
warm-up round first (the workers start then). Prints the elapsed
nanoseconds of the measured round.

usage: workers_mp.py --workers W --job trivial|cpu-1ms --load L --calls N [--warm M]
"""
import argparse
import multiprocessing
import sys
import threading
import time


def trivial(x):
    return x + 1


def cpu_1ms(x):
    end = time.thread_time() + 0.001
    while time.thread_time() < end:
        pass
    return x + 1


def round_(pool, fn, load, calls):
    done = threading.Event()
    state = {"active": load, "failed": False}
    lock = threading.Lock()

    def caller():
        box = {"left": calls, "x": 0}

        def got(r):
            if r != box["x"] + 1:
                state["failed"] = True
            box["x"] = r
            box["left"] -= 1
            if box["left"] > 0 and not state["failed"]:
                pool.apply_async(fn, (r,), callback=got, error_callback=bad)
            else:
                with lock:
                    state["active"] -= 1
                    if state["active"] == 0:
                        done.set()

        def bad(e):
            state["failed"] = True
            with lock:
                state["active"] -= 1
                if state["active"] == 0:
                    done.set()

        pool.apply_async(fn, (0,), callback=got, error_callback=bad)

    t0 = time.monotonic_ns()
    for _ in range(load):
        caller()
    done.wait()
    dt = time.monotonic_ns() - t0
    return None if state["failed"] else dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--job", default="trivial")
    ap.add_argument("--load", type=int, default=1)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--warm", type=int, default=100)
    a = ap.parse_args()
    fn = {"trivial": trivial, "cpu-1ms": cpu_1ms}[a.job]
    with multiprocessing.Pool(a.workers) as pool:
        round_(pool, fn, a.load, a.warm)
        ns = round_(pool, fn, a.load, a.calls)
    if ns is None:
        return 1
    print(ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
