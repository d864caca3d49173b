/* Fiber stacks: mmap'ed regions with a guard page, a per-loop pool of
 * finished ones, and the SIGSEGV handler that turns a guard-page hit into a
 * message naming the fiber.
 *
 * Guard pages. The obvious mprotect(PROT_NONE) splits the mapping in two, and
 * Linux caps a process at vm.max_map_count mappings (65530 by default): two
 * per fiber would stop us near 32,000 fibers. Linux 6.13 added
 * madvise(MADV_GUARD_INSTALL), which marks pages as faulting without
 * splitting the mapping (adjacent stacks even merge into one mapping), so
 * that is tried first, and mprotect is the fallback on older kernels (and
 * under valgrind, which does not know the new advice).
 *
 * Overflow reports. A fault on a guard page kills the process either way;
 * the point is to say why. The handler runs on an alternate signal stack
 * (the faulting stack is exhausted by definition), looks at the fiber
 * running on this thread (a thread-local set at every switch), and if the
 * fault address lies in its guard page writes "fiber '<name>' overflowed its
 * N-byte stack" with write(2) and aborts. Any other fault is handed to the
 * handler that was installed before ours (ASan's, or the default action). */
#include "fiber/fiber_internal.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifdef BRAID__FIBER_ASAN
#include <sanitizer/asan_interface.h>
#endif
#ifdef BRAID__FIBER_VALGRIND
#include <valgrind/valgrind.h>
#endif

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#ifndef MAP_STACK
#define MAP_STACK 0
#endif
#ifndef MAP_NORESERVE
#define MAP_NORESERVE 0
#endif

/* 0 unknown, 1 madvise guards work, -1 use mprotect. Process-wide and
 * benignly racy: every thread computes the same answer. */
static _Atomic int guard_madvise_ok;

static __thread braid_fiber *running __attribute__((tls_model("initial-exec")));

void braid__fiber_set_running(braid_fiber *f) { running = f; }

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

static int install_guard(void *p, size_t len) {
    int ok = atomic_load_explicit(&guard_madvise_ok, memory_order_relaxed);
    if (ok == 0) {
        /* BRAID_FIBER_GUARD=mprotect forces the old way (tests of the
         * fallback; emulators such as qemu-user accept the new advice but
         * ignore it). */
        const char *e = getenv("BRAID_FIBER_GUARD");
        if (e && !strcmp(e, "mprotect")) {
            atomic_store_explicit(&guard_madvise_ok, -1, memory_order_relaxed);
            ok = -1;
        }
    }
    if (ok >= 0) {
        if (madvise(p, len, MADV_GUARD_INSTALL) == 0) {
            if (!ok) atomic_store_explicit(&guard_madvise_ok, 1, memory_order_relaxed);
            return 0;
        }
        if (errno != EINVAL) return -errno;
        atomic_store_explicit(&guard_madvise_ok, -1, memory_order_relaxed);
    }
    return mprotect(p, len, PROT_NONE) == 0 ? 0 : -errno;
}

static void unmap(braid_fiber *f) {
#ifdef BRAID__FIBER_VALGRIND
    VALGRIND_STACK_DEREGISTER(f->vg_id);
#endif
    munmap(f->map, f->map_size);
}

braid_fiber *braid__fiber_stack_get(braid__fstate *st, size_t stack_size) {
    size_t page = st->page;
    if (stack_size > SIZE_MAX / 4) return NULL;              /* nonsense; would overflow */
    size_t req = round_up(stack_size ? stack_size : BRAID_FIBER_DEFAULT_STACK, page);
    size_t map_size = page + round_up(req + sizeof(braid_fiber) + 64, page);
    for (int i = 0; i < BRAID__FIBER_POOL_CLASSES; i++) {
        if (st->pool[i].map_size != map_size || !st->pool[i].head) continue;
        braid_fiber *f = st->pool[i].head;
        st->pool[i].head = f->next;
        st->npooled--;
        return f;
    }
    char *m = mmap(NULL, map_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (m == MAP_FAILED) return NULL;
    if (install_guard(m, page) < 0) {
        munmap(m, map_size);
        return NULL;
    }
    /* The control block at the top, cache-line aligned; the stack below it. */
    braid_fiber *f = (braid_fiber *)(((uintptr_t)(m + map_size) - sizeof(braid_fiber)) &
                                     ~(uintptr_t)63);
    f->map = m;
    f->map_size = map_size;
    f->stack_req = req;
    f->stack_lo = m + page;
    f->stack_hi = (char *)((uintptr_t)f & ~(uintptr_t)15);
#ifdef BRAID__FIBER_VALGRIND
    f->vg_id = VALGRIND_STACK_REGISTER(f->stack_lo, f->stack_hi);
#endif
    return f;
}

void braid__fiber_stack_put(braid__fstate *st, braid_fiber *f) {
#ifdef BRAID__FIBER_ASAN
    /* The fiber left through a switch, not by returning, so the redzones of
     * its outermost frames are still poisoned: clear them before the stack
     * is reused (or unmapped and the range handed to someone else). */
    ASAN_UNPOISON_MEMORY_REGION(f->stack_lo, (size_t)(f->stack_hi - f->stack_lo));
#endif
    if (st->npooled < st->pool_max) {
        int slot = -1;
        for (int i = 0; i < BRAID__FIBER_POOL_CLASSES; i++) {
            if (st->pool[i].map_size == f->map_size) { slot = i; break; }
            if (slot < 0 && !st->pool[i].head) slot = i;
        }
        if (slot >= 0) {
            st->pool[slot].map_size = f->map_size;
            f->next = st->pool[slot].head;
            st->pool[slot].head = f;
            st->npooled++;
            return;
        }
    }
    unmap(f);
}

void braid__fiber_pool_drain(braid__fstate *st) {
    for (int i = 0; i < BRAID__FIBER_POOL_CLASSES; i++) {
        braid_fiber *f = st->pool[i].head;
        while (f) {
            braid_fiber *next = f->next;
            unmap(f);
            f = next;
        }
        st->pool[i].head = NULL;
    }
    st->npooled = 0;
}

/* ---- overflow reports ------------------------------------------------------------ */
static struct sigaction previous_segv;
static pthread_once_t segv_once = PTHREAD_ONCE_INIT;

static size_t fmt_size(char *buf, size_t n) {
    char tmp[24];
    size_t len = 0;
    do { tmp[len++] = (char)('0' + n % 10); n /= 10; } while (n);
    for (size_t i = 0; i < len; i++) buf[i] = tmp[len - 1 - i];
    return len;
}

static void segv_handler(int sig, siginfo_t *info, void *uctx) {
    braid_fiber *f = running;
    char *addr = info->si_addr;
    if (f && addr >= f->map && addr < f->stack_lo) {
        /* Only async-signal-safe calls from here on. */
        char msg[160];
        size_t n = 0;
        static const char a[] = "fiber '", b[] = "' overflowed its ", c[] = "-byte stack\n";
        memcpy(msg + n, a, sizeof a - 1); n += sizeof a - 1;
        size_t nl = strnlen(f->name, sizeof f->name);
        memcpy(msg + n, f->name, nl); n += nl;
        memcpy(msg + n, b, sizeof b - 1); n += sizeof b - 1;
        n += fmt_size(msg + n, f->stack_req);
        memcpy(msg + n, c, sizeof c - 1); n += sizeof c - 1;
        ssize_t w = write(STDERR_FILENO, msg, n);
        (void)w;
        abort();
    }
    /* Not ours: hand over to whoever handled SIGSEGV before us. */
    if ((previous_segv.sa_flags & SA_SIGINFO) && previous_segv.sa_sigaction) {
        previous_segv.sa_sigaction(sig, info, uctx);
        return;
    }
    if (previous_segv.sa_handler != SIG_DFL && previous_segv.sa_handler != SIG_IGN &&
        previous_segv.sa_handler) {
        previous_segv.sa_handler(sig);
        return;
    }
    /* Default action: restore it and return; the faulting instruction runs
     * again and the kernel kills the process the usual way (core dump). */
    signal(SIGSEGV, SIG_DFL);
}

static void install_segv(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = segv_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &previous_segv);
}

#define ALTSTACK_SIZE (64u * 1024u)

void braid__fiber_guard_setup(braid__fstate *st) {
    pthread_once(&segv_once, install_segv);
    stack_t cur;
    if (sigaltstack(NULL, &cur) == 0 && !(cur.ss_flags & SS_DISABLE)) return;  /* has one */
    void *m = mmap(NULL, ALTSTACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (m == MAP_FAILED) {
        braid__log(st->loop, BRAID_LOG_WARN,
                   "no alternate signal stack; a stack overflow will not be named");
        return;
    }
    stack_t ss = { .ss_sp = m, .ss_size = ALTSTACK_SIZE, .ss_flags = 0 };
    if (sigaltstack(&ss, NULL) < 0) {
        munmap(m, ALTSTACK_SIZE);
        return;
    }
    st->altstack = m;
    st->altstack_size = ALTSTACK_SIZE;
}

void braid__fiber_guard_teardown(braid__fstate *st) {
    if (!st->altstack) return;
    stack_t cur;
    /* Disable it only if it is still ours (the user may have replaced it;
     * then nobody else can be using our memory). Another loop on this thread
     * that relied on it loses overflow naming, not safety. */
    if (sigaltstack(NULL, &cur) == 0 && cur.ss_sp == st->altstack) {
        stack_t off = { .ss_sp = NULL, .ss_size = 0, .ss_flags = SS_DISABLE };
        sigaltstack(&off, NULL);
    }
    munmap(st->altstack, st->altstack_size);
    st->altstack = NULL;
}
