/* The slot page of a worker pool (process_internal.h describes it): who
 * starts a call sent to a worker — the worker, or the parent's cancel — is
 * decided by one compare-and-swap in memory both processes map. */
#include "process/process_internal.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "the slot page needs lock-free 64-bit atomics (shared between processes)");

/* The page's bytes: the header and count slots; at most 64 MiB. */
static size_t page_size_of(uint32_t count) { return sizeof(braid__slots) + (size_t)count * sizeof(uint64_t); }
#define SLOTS_MAX_BYTES ((size_t)64 << 20)

int braid__slots_new(uint32_t count, braid__slot_page *out, int *fd) {
    size_t size = page_size_of(count);
    if (count == 0 || size > SLOTS_MAX_BYTES) return BRAID_EINVAL;
#ifdef __linux__
    /* LINUX-ONLY (marked place): memfd_create; elsewhere a POSIX shared
     * memory object, unlinked at once. */
    int f = memfd_create("braid-worker-slots", MFD_CLOEXEC);
#else
    char name[64];
    static _Atomic unsigned seq;
    snprintf(name, sizeof name, "/braid-slots-%d-%u", (int)getpid(), atomic_fetch_add(&seq, 1));
    int f = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (f >= 0) shm_unlink(name);
#endif
    if (f < 0) return -errno;
    int rc = 0;
    void *p = MAP_FAILED;
    if (ftruncate(f, (off_t)size) < 0 ||
        (p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0)) == MAP_FAILED) {
        rc = -errno;
        close(f);
        return rc;
    }
    braid__slots *s = p;
    s->magic = BRAID__SLOTS_MAGIC;
    s->count = count;   /* the slots are zero: nothing taken, nothing cancelled */
    *out = (braid__slot_page){ s, count };
    *fd = f;
    return 0;
}

int braid__slots_map(int fd, braid__slot_page *out) {
    struct stat st;
    *out = (braid__slot_page){ NULL, 0 };
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= (off_t)page_size_of(1) &&
        (size_t)st.st_size <= SLOTS_MAX_BYTES) {
        size_t size = (size_t)st.st_size;
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED) {
            braid__slots *s = p;
            uint32_t count = s->count;
            if (s->magic == BRAID__SLOTS_MAGIC && count > 0 && page_size_of(count) == size)
                *out = (braid__slot_page){ s, count };
            else
                munmap(p, size);
        }
    }
    close(fd);
    return out->p ? 0 : BRAID_EINVAL;
}

void braid__slots_free(braid__slot_page *pg) {
    if (pg->p) munmap(pg->p, page_size_of(pg->count));
    *pg = (braid__slot_page){ NULL, 0 };
}

bool braid__slots_take(const braid__slot_page *pg, uint64_t k) {
    _Atomic uint64_t *p = &pg->p->slot[k % pg->count];
    uint64_t old = atomic_load(p);
    for (;;) {
        if (old == BRAID__SLOT_CANCEL(k)) {
            atomic_store(p, BRAID__SLOT_DROPPED(k));   /* the parent writes no more after CANCEL */
            return false;
        }
        if (atomic_compare_exchange_weak(p, &old, BRAID__SLOT_TAKEN(k))) return true;
    }
}

bool braid__slots_dropped(const braid__slot_page *pg, uint64_t k) {
    return atomic_load(&pg->p->slot[k % pg->count]) == BRAID__SLOT_DROPPED(k);
}

bool braid__slots_cancel(const braid__slot_page *pg, uint64_t k) {
    _Atomic uint64_t *p = &pg->p->slot[k % pg->count];
    uint64_t old = atomic_load(p);
    /* Bounded: a worker that keeps rewriting the slot has its call counted
     * as started (its timeout then kills it). */
    for (int i = 0; i < 64; i++) {
        if (old == BRAID__SLOT_TAKEN(k)) return false;
        if (atomic_compare_exchange_weak(p, &old, BRAID__SLOT_CANCEL(k))) return true;
    }
    return false;
}
