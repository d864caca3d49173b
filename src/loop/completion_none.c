/* The completion service in a build without liburing (loop/completion.h):
 * absent, so transports keep to readiness. Every call says BRAID_ENOSYS. */
#ifndef BRAID_HAVE_URING
#include "loop/completion.h"
#include <string.h>

bool braid__completion_available(braid_loop *loop) { (void)loop; return false; }
void braid__completion_op_init(braid__completion_op *op, braid__completion_cb cb, void *data) {
    memset(op, 0, sizeof *op);
    op->cb = cb;
    op->data = data;
}
bool braid__completion_op_active(const braid__completion_op *op) { (void)op; return false; }
void braid__completion_op_unref(braid__completion_op *op) { (void)op; }
void braid__completion_op_internal(braid__completion_op *op) { (void)op; }
int braid__completion_send(braid_loop *loop, braid__completion_op *op, int fd, const void *buf,
                           size_t len, int msg_flags) {
    (void)loop; (void)op; (void)fd; (void)buf; (void)len; (void)msg_flags;
    return BRAID_ENOSYS;
}
int braid__completion_cancel(braid__completion_op *op) { (void)op; return BRAID_EINVAL; }
int braid__completion_flush(braid_loop *loop) { (void)loop; return BRAID_ENOSYS; }
int braid__completion_bufs_new(braid_loop *loop, unsigned count, unsigned max, unsigned size,
                               unsigned flags, braid__completion_bufs **out) {
    (void)loop; (void)count; (void)max; (void)size; (void)flags;
    *out = NULL;
    return BRAID_ENOSYS;
}
/* No ring can exist, so nothing below is ever reached with one. */
void braid__completion_bufs_free(braid__completion_bufs *b) { (void)b; }
void braid__completion_bufs_internal(braid__completion_bufs *b) { (void)b; }
unsigned braid__completion_bufs_size(const braid__completion_bufs *b) { (void)b; return 0; }
unsigned braid__completion_bufs_count(const braid__completion_bufs *b) { (void)b; return 0; }
size_t braid__completion_bufs_memory(const braid__completion_bufs *b) { (void)b; return 0; }
bool braid__completion_bufs_incremental(const braid__completion_bufs *b) { (void)b; return false; }
int braid__completion_bufs_grow(braid__completion_bufs *b) { (void)b; return 0; }
void *braid__completion_bufs_data(braid__completion_bufs *b, unsigned flags) {
    (void)b; (void)flags;
    return NULL;
}
void braid__completion_bufs_consumed(braid__completion_bufs *b, unsigned flags, int res) {
    (void)b; (void)flags; (void)res;
}
bool braid__completion_bufs_pin(braid__completion_bufs *b, unsigned flags) { (void)b; (void)flags; return false; }
void braid__completion_bufs_unpin(braid__completion_bufs *b, unsigned bid) { (void)b; (void)bid; }
void *braid__completion_bufs_get(braid__completion_bufs *b, unsigned bid) { (void)b; (void)bid; return NULL; }
void braid__completion_bufs_recycle(braid__completion_bufs *b, unsigned bid) { (void)b; (void)bid; }
int braid__completion_recv_multishot(braid_loop *loop, braid__completion_op *op, int fd,
                                     braid__completion_bufs *b) {
    (void)loop; (void)op; (void)fd; (void)b;
    return BRAID_ENOSYS;
}
bool braid__completion_have_recv_multishot(void) { return false; }
#endif
