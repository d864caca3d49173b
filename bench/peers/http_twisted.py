"""Twisted web peer for braid-bench's http experiment.

usage: http_twisted.py PORT

GET / -> 200, Content-Type text/plain, "Hello, World!" (twisted.web.server.Site,
epoll reactor, access log off, backlog 511, bound to 127.0.0.1)."""
import sys

from twisted.internet import epollreactor
epollreactor.install()
from twisted.internet import reactor  # noqa: E402
from twisted.web import resource, server  # noqa: E402


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return b"Hello, World!"


class QuietSite(server.Site):
    def log(self, request):
        pass


reactor.listenTCP(int(sys.argv[1]), QuietSite(Hello()), backlog=511, interface="127.0.0.1")
reactor.run()
