/* braid_strerror: names for -errno codes and for braid's own range. */
#include "base/base.h"
#include <string.h>

static const char *const own[] = {
    [1]  = "Deferred already called",
    [2]  = "queue full",
    [3]  = "queue empty",
    [4]  = "malformed input from peer",
    [5]  = "write buffer over its hard limit",
    [6]  = "not inside a fiber",
    [7]  = "unhandled failure",
    [8]  = "shutting down",
    [9]  = "malformed endpoint description",
    [10] = "connection done",
    [11] = "connection lost",
    [12] = "TLS error",
    [13] = "certificate verification failed",
    [14] = "HTTP protocol error",
    [15] = "lock misuse",
    [16] = "first error",
    [17] = "every raced Deferred failed",
    [32] = "end of stream before the requested data",
    [56] = "incomplete HTTP message (more input needed)",
    [57] = "malformed HTTP message",
    [58] = "ambiguous or invalid HTTP body framing",
    [59] = "malformed chunked encoding",
    [60] = "HTTP request line too long",
    [61] = "HTTP header fields too large",
    [62] = "HTTP body too large",
    [63] = "HTTP version not supported",
    [64] = "TLS: peer certificate does not match the host name",
    [65] = "TLS: peer certificate has expired or is not yet valid",
    [66] = "TLS: peer certificate is not issued by a trusted CA",
    [67] = "TLS: peer sent no certificate but one is required",
    [68] = "TLS handshake timed out",
    [69] = "TLS renegotiation refused",
    [70] = "TLS: peer sent a fatal alert",
    [71] = "TLS: stream truncated (no close_notify or handshake cut short)",
};

const char *braid_strerror(int code) {
    if (code == 0) return "success";
    if (code <= BRAID_ERRBASE && code >= BRAID_ERRLAST) {
        int i = BRAID_ERRBASE - code;
        if ((size_t)i < sizeof own / sizeof own[0] && own[i]) return own[i];
        return "unknown braid error";
    }
    if (code < 0 && code > -4000) {
        /* strerrordesc_np is thread-safe and never allocates (glibc >= 2.32). */
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
        const char *s = strerrordesc_np(-code);
        return s ? s : "unknown error";
#else
        return strerror(-code);
#endif
    }
    return "unknown error";
}
