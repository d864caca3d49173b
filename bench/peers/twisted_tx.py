#!/usr/bin/python3
"""The tx study's peer: bank transfers through Twisted's adbapi.

Each of --clients clients does transfers back to back for --seconds: move a
random amount from account A to account B if A's balance allows, log it,
then notify a subscriber over a socket ("<id>\\n"). --arm runQuery issues the
five statements as five runQuery/runOperation calls (each its own
transaction and thread hop: how adbapi users write it); --arm runInteraction
runs them as one interaction. --faults P makes the fourth statement fail
with probability P (a reference to a missing table: a rollback). Prints one
JSON line: transfers, seconds, p50/p99 latency (us), and the consistency
check (sum of balances vs the invariant, negative balances, notifications of
transfers that did not commit). Uses the schema exp_tx.c created.
"""
import argparse
import json
import os
import random
import socket
import sys
import threading
import time

from twisted.enterprise import adbapi
from twisted.internet import defer, reactor

ap = argparse.ArgumentParser()
ap.add_argument("--engine", required=True, choices=["sqlite", "postgresql"])
ap.add_argument("--target", required=True)  # sqlite path or libpq conninfo
ap.add_argument("--arm", required=True, choices=["runQuery", "runInteraction"])
ap.add_argument("--clients", type=int, default=8)
ap.add_argument("--connections", type=int, default=8)
ap.add_argument("--seconds", type=float, default=0.5)
ap.add_argument("--accounts", type=int, default=20)
ap.add_argument("--faults", type=float, default=0.0)
ap.add_argument("--first-id", type=int, default=1)
a = ap.parse_args()

pg = a.engine == "postgresql"
if pg:
    pool = adbapi.ConnectionPool("psycopg2", a.target, cp_min=a.connections,
                                 cp_max=a.connections, cp_reconnect=True)
    P = "%s"
else:
    def setup(conn):  # what braid sets on every SQLite connection
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")

    pool = adbapi.ConnectionPool("sqlite3", a.target, cp_min=a.connections,
                                 cp_max=a.connections, check_same_thread=False,
                                 timeout=5, isolation_level=None, cp_openfun=setup)
    P = "?"

READ = "SELECT bal FROM acct WHERE id = %s" % P
# lock A and B in id order (PostgreSQL): transfers never deadlock
READ_LOCK = "SELECT id, bal FROM acct WHERE id IN (%s, %s) ORDER BY id FOR UPDATE" % (P, P)
DEBIT = "UPDATE acct SET bal = bal - %s WHERE id = %s" % (P, P)
CREDIT = "UPDATE acct SET bal = bal + %s WHERE id = %s" % (P, P)
CREDIT_FAULT = CREDIT + " AND EXISTS (SELECT 1 FROM no_such_table)"
LOG = "INSERT INTO xlog (id, a, b, amount) VALUES (%s, %s, %s, %s)" % (P, P, P, P)

rsock, wsock = socket.socketpair()
notified = []


def reader():
    buf = b""
    while True:
        d = rsock.recv(65536)
        if not d:
            break
        buf += d
        *lines, buf = buf.split(b"\n")
        notified.extend(int(x) for x in lines if x)


rt = threading.Thread(target=reader, daemon=True)
rt.start()

next_id = [a.first_id]
lat = []
done = [0]
deadline = [0.0]


def pick():
    x = random.randrange(a.accounts) + 1
    y = random.randrange(a.accounts - 1) + 1
    if y >= x:
        y += 1
    return x, y, random.randrange(1, 20)


def interaction(txn, i, x, y, amt, fault):
    if not pg:
        txn.execute("BEGIN IMMEDIATE")
    if pg:
        txn.execute(READ_LOCK, (x, y))
        bal = [r[1] for r in txn.fetchall() if r[0] == x][0]
    else:
        txn.execute(READ, (x,))
        bal = txn.fetchone()[0]
    txn.execute(READ, (y,))
    txn.fetchone()
    if bal < amt:
        return False
    txn.execute(DEBIT, (amt, x))
    txn.execute(CREDIT_FAULT if fault else CREDIT, (amt, y))
    txn.execute(LOG, (i, x, y, amt))
    return True


@defer.inlineCallbacks
def client():
    while time.monotonic() < deadline[0]:
        i = next_id[0]
        next_id[0] += 1
        x, y, amt = pick()
        fault = random.random() < a.faults
        t0 = time.monotonic()
        try:
            if a.arm == "runInteraction":
                ok = yield pool.runInteraction(interaction, i, x, y, amt, fault)
            else:
                rows = yield pool.runQuery(READ, (x,))
                yield pool.runQuery(READ, (y,))
                ok = rows[0][0] >= amt
                if ok:
                    yield pool.runOperation(DEBIT, (amt, x))
                    yield pool.runOperation(CREDIT_FAULT if fault else CREDIT, (amt, y))
                    yield pool.runOperation(LOG, (i, x, y, amt))
            if ok:
                wsock.sendall(b"%d\n" % i)
        except Exception:
            pass  # a rollback or a lost connection: counted by the check
        lat.append(time.monotonic() - t0)
        done[0] += 1


finished = [0]


def check_and_report(el, hung):
    """The consistency check on a connection of its own (the pool may be stuck)."""
    wsock.shutdown(socket.SHUT_WR)
    rt.join(5)
    if pg:
        import psycopg2
        c = psycopg2.connect(a.target)
    else:
        import sqlite3
        c = sqlite3.connect(a.target, timeout=30)
    cur = c.cursor()
    cur.execute("SELECT CAST(coalesce(sum(bal), 0) AS BIGINT), "
                "CAST(coalesce(sum(CASE WHEN bal < 0 THEN 1 ELSE 0 END), 0) AS BIGINT) FROM acct")
    total, negative = cur.fetchone()
    cur.execute("SELECT id FROM xlog WHERE id >= %s" % P, (a.first_id,))
    logged = {r[0] for r in cur.fetchall()}
    c.close()
    lat.sort()
    n = len(lat)
    out = {
        "transfers": done[0], "seconds": el,
        "p50_us": lat[n // 2] * 1e6 if n else 0, "p99_us": lat[min(n - 1, n * 99 // 100)] * 1e6 if n else 0,
        "sum": int(total), "negative": int(negative),
        "notified": len(notified),
        "notified_uncommitted": sum(1 for i in notified if i not in logged),
        "committed": len(logged),
        "hung": hung,
    }
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)


t_start = [0.0]


def give_up():
    # clients still waiting long after the deadline: adbapi lost them (a killed
    # connection whose Deferred never fires); report and leave
    check_and_report(time.monotonic() - t_start[0], a.clients - finished[0])


@defer.inlineCallbacks
def counted_client():
    yield client()
    finished[0] += 1


@defer.inlineCallbacks
def main():
    t_start[0] = time.monotonic()
    reactor.callLater(a.seconds + 10, give_up)
    # warm the pool's connections (a killed one may fail: that is fine here)
    yield defer.DeferredList([pool.runQuery("SELECT 1") for _ in range(a.connections)], consumeErrors=True)
    t0 = time.monotonic()
    t_start[0] = t0
    deadline[0] = t0 + a.seconds
    yield defer.DeferredList([counted_client() for _ in range(a.clients)])
    check_and_report(time.monotonic() - t0, 0)


reactor.callWhenRunning(main)
reactor.run()
