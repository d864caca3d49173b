"""The Twisted server of braid-bench's `overload` experiment.

16-byte requests {u64 id, u64 intended}; each needs about 1 ms on a shared
"device" with C channels (a threading.Semaphore held across time.sleep), run
with deferToThread (the reactor's thread pool, Twisted's usual way); the
answer echoes the 16 bytes. No admission control: the thread pool's queue
is unbounded, as in an ordinary Twisted server.

usage: overload_twisted.py PORT CHANNELS
"""
import sys
import threading
import time

from twisted.internet import protocol, reactor, threads

DEVICE = threading.Semaphore(int(sys.argv[2]))


def work(req):
    with DEVICE:
        time.sleep(0.001)
    return req


class Server(protocol.Protocol):
    def connectionMade(self):
        self.buf = b""
        self.transport.setTcpNoDelay(True)

    def dataReceived(self, data):
        self.buf += data
        while len(self.buf) >= 16:
            req, self.buf = self.buf[:16], self.buf[16:]
            threads.deferToThread(work, req).addCallback(self.answer)

    def answer(self, req):
        if self.transport.connected:
            self.transport.write(req)


class Factory(protocol.Factory):
    protocol = Server


reactor.listenTCP(int(sys.argv[1]), Factory(), backlog=511, interface="127.0.0.1")
reactor.run()
