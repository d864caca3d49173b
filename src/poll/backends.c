/* The table of poller backends built into the library. A new backend is a
 * file in this folder and a line here; the loop finds it by name. */
#include "poll/poller.h"
#include <string.h>

extern const braid__poller_ops braid__poller_select;
extern const braid__poller_ops braid__poller_poll;
#ifdef __linux__
extern const braid__poller_ops braid__poller_epoll;
#endif
#ifdef BRAID_HAVE_URING
extern const braid__poller_ops braid__poller_uring;
#endif

const braid__poller_ops *const braid__pollers[] = {
    &braid__poller_select,
    &braid__poller_poll,
#ifdef __linux__
    &braid__poller_epoll,
#endif
#ifdef BRAID_HAVE_URING
    &braid__poller_uring,
#endif
    NULL,
};

const braid__poller_ops *braid__poller_find(const char *name) {
    for (size_t i = 0; braid__pollers[i]; i++)
        if (!strcmp(braid__pollers[i]->name, name)) return braid__pollers[i];
    return NULL;
}
