"""The Twisted peer of braid-bench's connscale study: the same protocol
(16-byte request {seq, x} as little-endian u64s -> {seq, 2x+1}, then close)
on Twisted's epoll reactor, written the way a Twisted user would.

    /usr/bin/python3 connscale_twisted.py --port P [--backlog B]

prints "ready P", serves until "quit" on stdin, then prints
"stats MAXRSS_KIB UTIME_US STIME_US NVCSW NIVCSW" and exits.
Same choices as the C servers: TCP_NODELAY, the same listen backlog,
logging off."""
import resource
import struct
import sys
import threading

from twisted.internet import epollreactor

epollreactor.install()
from twisted.internet import protocol, reactor  # noqa: E402

REQ = struct.Struct("<QQ")


class Reply(protocol.Protocol):
    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        self.buf = b""

    def dataReceived(self, data):
        self.buf += data
        if len(self.buf) >= 16:
            seq, x = REQ.unpack_from(self.buf)
            self.transport.write(REQ.pack(seq, (2 * x + 1) & 0xFFFFFFFFFFFFFFFF))
            self.transport.loseConnection()


class Factory(protocol.Factory):
    protocol = Reply
    noisy = False


def control():
    for line in sys.stdin:
        if line.startswith("quit"):
            break
    reactor.callFromThread(reactor.stop)


def main():
    port, backlog = 0, 4096
    args = sys.argv[1:]
    for i in range(0, len(args) - 1, 2):
        if args[i] == "--port":
            port = int(args[i + 1])
        elif args[i] == "--backlog":
            backlog = int(args[i + 1])
    lp = reactor.listenTCP(port, Factory(), backlog=backlog, interface="127.0.0.1")
    print("ready %d" % lp.getHost().port, flush=True)
    threading.Thread(target=control, daemon=True).start()
    reactor.run(installSignalHandlers=False)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print("stats %d %d %d %d %d" % (ru.ru_maxrss, int(ru.ru_utime * 1e6), int(ru.ru_stime * 1e6),
                                    ru.ru_nvcsw, ru.ru_nivcsw), flush=True)


if __name__ == "__main__":
    main()
