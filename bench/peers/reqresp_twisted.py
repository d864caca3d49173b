"""Twisted peer for braid-bench's reqresp and echo experiments.

usage: reqresp_twisted.py PORT [reqresp|echo]

Same protocol as the C servers: 16-byte requests {u64 seq, u64 x} little-
endian answered with {seq, 2x+1}; every request complete in one
dataReceived is answered with one write. epoll reactor, TCP_NODELAY,
backlog 511, no logging."""
import struct
import sys

from twisted.internet import epollreactor
epollreactor.install()
from twisted.internet import protocol, reactor  # noqa: E402

REQ = struct.Struct("<QQ")


class ReqResp(protocol.Protocol):
    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        self.buf = b""

    def dataReceived(self, data):
        if self.buf:
            data = self.buf + data
        n = len(data) - len(data) % 16
        out = []
        unpack, pack = REQ.unpack_from, REQ.pack
        for off in range(0, n, 16):
            seq, x = unpack(data, off)
            out.append(pack(seq, (2 * x + 1) & 0xFFFFFFFFFFFFFFFF))
        self.buf = data[n:]
        if out:
            self.transport.write(b"".join(out))


class Echo(protocol.Protocol):
    def connectionMade(self):
        self.transport.setTcpNoDelay(True)

    def dataReceived(self, data):
        self.transport.write(data)


def main():
    port = int(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "reqresp"
    f = protocol.Factory()
    f.protocol = Echo if mode == "echo" else ReqResp
    f.noisy = False
    reactor.listenTCP(port, f, backlog=511, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
