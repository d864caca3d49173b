"""Part of CTest bench.smoke: the multi-loop serve modes run on braid_serve.

`serve http --threads|--processes 2 --method M` answers, counts every
request and accept per loop in its --stats-file (bench_loop_stats: 64-byte
slots of u64 accepts, requests) and stops by itself after --seconds;
`serve connscale --model procs` answers the connscale protocol and, on
"quit", prints its stats line. Usage: serve_check.py BRAID_BENCH TMPDIR"""
import os
import socket
import struct
import subprocess
import sys
import time

bench, out = sys.argv[1], sys.argv[2]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def connect(port):
    for _ in range(200):
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def loop_counts(path, loops):
    data = open(path, "rb").read()
    return [struct.unpack_from("<QQ", data, 64 * i) for i in range(loops)]


for mode in (["--threads", "2", "--method", "acceptor"], ["--processes", "2", "--method", "exclusive"]):
    port, stats = free_port(), os.path.join(out, "serve.stats")
    p = subprocess.Popen([bench, "serve", "http", "--port", str(port), "--seconds", "2",
                          "--stats-file", stats] + mode)
    for _ in range(4):
        c = connect(port)
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while True:
            b = c.recv(4096)
            if not b:
                break
            reply += b
        c.close()
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"Hello, World!"), (mode, reply)
    assert p.wait(timeout=20) == 0, mode
    counts = loop_counts(stats, 2)
    accepts, requests = sum(a for a, _ in counts), sum(r for _, r in counts)
    assert requests == 4 and accepts >= 4, (mode, counts)   # connect() retries may add accepts

p = subprocess.Popen([bench, "serve", "connscale", "--model", "procs", "--threads", "2", "--port", "0"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
port = int(p.stdout.readline().split()[1])
c = connect(port)
c.sendall(struct.pack("<QQ", 7, 20))
got = b""
while len(got) < 16:
    b = c.recv(16 - len(got))
    if not b:
        break
    got += b
assert got == struct.pack("<QQ", 7, 41), got
c.close()
p.stdin.write("quit\n")
p.stdin.flush()
line = p.stdout.readline()
assert line.startswith("stats ") and len(line.split()) == 6, line
assert p.wait(timeout=20) == 0
print("serve on braid_serve: ok")
