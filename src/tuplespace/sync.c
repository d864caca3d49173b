/* The blocking client: one request at a time over a descriptor, for a
 * worker process that has no loop. Frames as in wire.c; a reply whose id
 * is not the one awaited (a late answer to nothing) is skipped. */
#include "tuplespace_internal.h"
#include <poll.h>
#include <unistd.h>

struct braid_tuplespace_sync {
    int fd;                        /* replies are read here */
    int wfd;                       /* requests are written here (== fd but for pipes) */
    size_t max_frame;
    uint32_t next_id;
    ts_buf out;
    uint8_t *in;
    size_t in_cap;
};

int braid_tuplespace_sync_new_pipes(int rfd, int wfd, size_t max_frame, braid_tuplespace_sync **out) {
    braid_tuplespace_sync *s = braid_calloc(1, sizeof *s);
    if (!s) {
        close(rfd);
        if (wfd != rfd) close(wfd);
        return BRAID_ENOMEM;
    }
    s->fd = rfd;
    s->wfd = wfd;
    s->max_frame = max_frame ? max_frame : TS_DEFAULT_MAX_FRAME;
    *out = s;
    return 0;
}

int braid_tuplespace_sync_new(int fd, size_t max_frame, braid_tuplespace_sync **out) {
    return braid_tuplespace_sync_new_pipes(fd, fd, max_frame, out);
}

void braid_tuplespace_sync_free(braid_tuplespace_sync *s) {
    if (!s) return;
    close(s->fd);
    if (s->wfd != s->fd) close(s->wfd);
    braid__ts_buf_free(&s->out);
    braid_free(s->in);
    braid_free(s);
}

/* Wait for the descriptor (it may be non-blocking). */
static int wait_fd(int fd, short ev) {
    struct pollfd p = { fd, ev, 0 };
    while (poll(&p, 1, -1) < 0)
        if (errno != EINTR) return -errno;
    return 0;
}

static int write_all(int fd, const uint8_t *p, size_t len) {
    while (len) {
        ssize_t k = write(fd, p, len);
        if (k < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { int rc = wait_fd(fd, POLLOUT); if (rc < 0) return rc; continue; }
            return -errno;
        }
        p += k;
        len -= (size_t)k;
    }
    return 0;
}

static int read_full(int fd, uint8_t *p, size_t len) {
    while (len) {
        ssize_t k = read(fd, p, len);
        if (k == 0) return BRAID_ECONNECTION_DONE;
        if (k < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { int rc = wait_fd(fd, POLLIN); if (rc < 0) return rc; continue; }
            return -errno;
        }
        p += k;
        len -= (size_t)k;
    }
    return 0;
}

/* Send the frame in s->out (id `id`) and read frames until its reply. */
static int roundtrip(braid_tuplespace_sync *s, uint32_t id, braid_field *f, ts_msg *m) {
    if (s->out.failed) { s->out.len = 0; s->out.failed = false; return BRAID_ENOMEM; }
    int rc = write_all(s->wfd, s->out.p, s->out.len);
    s->out.len = 0;
    if (rc < 0) return rc;
    for (;;) {
        uint8_t hdr[4];
        if ((rc = read_full(s->fd, hdr, 4)) < 0) return rc;
        size_t len = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
        if (len > s->max_frame) return BRAID_EMSGSIZE;
        if (len > s->in_cap) {
            uint8_t *p = braid_realloc(s->in, len);
            if (!p) return BRAID_ENOMEM;
            s->in = p;
            s->in_cap = len;
        }
        if ((rc = read_full(s->fd, s->in, len)) < 0) return rc;
        if ((rc = braid__ts_wire_decode(s->in, len, f, m)) < 0) return rc;
        if (m->op != TS_OP_REPLY) return BRAID_ETUPLE_PROTO;
        if (m->id == id) return m->status;
    }
}

static uint32_t begin(braid_tuplespace_sync *s, uint8_t op, size_t *at) {
    if (++s->next_id == 0) s->next_id = 1;
    s->out.len = 0;
    *at = braid__ts_wire_begin(&s->out, op, s->next_id);
    return s->next_id;
}

static int status_only(braid_tuplespace_sync *s, uint32_t id, size_t at) {
    braid_field f[1];
    ts_msg m;
    braid__ts_wire_end(&s->out, at);
    return roundtrip(s, id, f, &m);
}

int braid_tuplespace_sync_out(braid_tuplespace_sync *s, const braid_field *f, size_t n, int32_t priority) {
    int rc = braid__ts_check(f, n, false);
    if (rc < 0) return rc;
    size_t at;
    uint32_t id = begin(s, TS_OP_OUT, &at);
    braid__ts_put_u32(&s->out, (uint32_t)priority);
    braid__ts_put_fields(&s->out, f, n);
    return status_only(s, id, at);
}

static int take_call(braid_tuplespace_sync *s, uint8_t op, const braid_field *tmpl, size_t n,
                     uint64_t lease_ns, uint64_t timeout, braid_tuple **out) {
    int rc = braid__ts_check(tmpl, n, true);
    if (rc < 0) return rc;
    size_t at;
    uint32_t id = begin(s, op, &at);
    braid__ts_put_u64(&s->out, timeout);
    if (op == TS_OP_IN_LEASE) braid__ts_put_u64(&s->out, lease_ns);
    braid__ts_put_fields(&s->out, tmpl, n);
    braid__ts_wire_end(&s->out, at);
    braid_field f[BRAID_TUPLE_MAX_FIELDS];
    ts_msg m;
    if ((rc = roundtrip(s, id, f, &m)) < 0) return rc;
    if (m.ntuples != 1) return BRAID_ETUPLE_PROTO;
    const uint8_t *p = m.rest;
    size_t len = m.rest_len;
    if ((rc = braid__ts_wire_tuple(&p, &len, out)) < 0) return rc;
    if (len) { braid_tuple_free(*out); *out = NULL; return BRAID_ETUPLE_PROTO; }
    return 0;
}

int braid_tuplespace_sync_in(braid_tuplespace_sync *s, const braid_field *tmpl, size_t n,
                             uint64_t timeout, braid_tuple **out) {
    return take_call(s, TS_OP_IN, tmpl, n, 0, timeout, out);
}
int braid_tuplespace_sync_rd(braid_tuplespace_sync *s, const braid_field *tmpl, size_t n,
                             uint64_t timeout, braid_tuple **out) {
    return take_call(s, TS_OP_RD, tmpl, n, 0, timeout, out);
}
int braid_tuplespace_sync_in_lease(braid_tuplespace_sync *s, const braid_field *tmpl, size_t n,
                                   uint64_t lease_ns, uint64_t timeout, braid_tuple **out) {
    return take_call(s, TS_OP_IN_LEASE, tmpl, n, lease_ns, timeout, out);
}

int braid_tuplespace_sync_ack(braid_tuplespace_sync *s, uint64_t lease) {
    size_t at;
    uint32_t id = begin(s, TS_OP_ACK, &at);
    braid__ts_put_u64(&s->out, lease);
    return status_only(s, id, at);
}

int braid_tuplespace_sync_nack(braid_tuplespace_sync *s, uint64_t lease, uint64_t delay) {
    size_t at;
    uint32_t id = begin(s, TS_OP_NACK, &at);
    braid__ts_put_u64(&s->out, lease);
    braid__ts_put_u64(&s->out, delay);
    return status_only(s, id, at);
}
