/* Error domains: each module names its own codes (no central table), a
 * library built on braid registers its range, and no code has two names. */
#include "harness.h"
#include "base/base.h"   /* braid__error_domains_check */

/* A module's domain lives in one of its objects; a program linked against
 * the static library has a module's names when it uses the module (that is
 * when its codes can reach it). This test uses none, so it names one
 * function of each module to link them all. */
void *const bt_link_modules[] = {
    (void *)braid_transport_write, (void *)braid_fiber_spawn, (void *)braid_endpoint_parse_server,
    (void *)braid_fstream_new, (void *)braid_tls_ctx_new, (void *)braid_http_parse_request,
};

/* Every code braid declares has a name, given by its module. */
BT_TEST(every_code_is_named) {
    static const int codes[] = {
        BRAID_EALREADY_CALLED, BRAID_EQUEUE_FULL, BRAID_EQUEUE_EMPTY, BRAID_EPROTO_INPUT,
        BRAID_EBUFFER_LIMIT, BRAID_ENOT_IN_FIBER, BRAID_EUNHANDLED, BRAID_ESHUTDOWN,
        BRAID_EBAD_ENDPOINT, BRAID_ECONNECTION_DONE, BRAID_ECONNECTION_LOST, BRAID_ETLS,
        BRAID_EVERIFY, BRAID_EHTTP, BRAID_ELOCKED, BRAID_EFIRST_ERROR, BRAID_EALL_FAILED,
        BRAID_EEOF,
        BRAID_ETLS_HOSTNAME, BRAID_ETLS_EXPIRED, BRAID_ETLS_UNKNOWN_CA, BRAID_ETLS_NO_CERT,
        BRAID_ETLS_TIMEOUT, BRAID_ETLS_RENEGOTIATION, BRAID_ETLS_ALERT, BRAID_ETLS_TRUNCATED,
        BRAID_EHTTP_INCOMPLETE, BRAID_EHTTP_SYNTAX, BRAID_EHTTP_FRAMING, BRAID_EHTTP_CHUNK,
        BRAID_EHTTP_URI_TOO_LONG, BRAID_EHTTP_HEADERS_TOO_LARGE, BRAID_EHTTP_BODY_TOO_LARGE,
        BRAID_EHTTP_VERSION,
    };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        const char *n = braid_strerror(codes[i]);
        if (!strcmp(n, "unknown braid error")) bt_fail(__FILE__, __LINE__, "code %d has no name", codes[i]);
    }
    BT_STREQ(braid_strerror(BRAID_ETLS_ALERT), "TLS: peer sent a fatal alert");
    BT_STREQ(braid_strerror(BRAID_EHTTP_VERSION), "HTTP version not supported");
    BT_STREQ(braid_strerror(BRAID_EEOF), "end of stream before the requested data");
    BT_STREQ(braid_strerror(BRAID_ECONNECTION_DONE), "connection done");
}

/* The modules' codes sit in their ranges (docs/conventions.md). */
BT_TEST(codes_in_their_ranges) {
    BT_TRUE(BRAID_EEOF <= -4032 && BRAID_EEOF >= -4047);
    BT_TRUE(BRAID_ETLS_HOSTNAME <= -4064 && BRAID_ETLS_TRUNCATED >= -4099);
    BT_TRUE(BRAID_EHTTP_INCOMPLETE <= -4100 && BRAID_EHTTP_VERSION >= -4149);
    BT_EQ(BRAID_ERRLAST, -4999);
    int dup = 0;
    if (!braid__error_domains_check(&dup)) bt_fail(__FILE__, __LINE__, "code %d named twice", dup);
}

static const char *const my_names[] = { "mine: first", NULL, "mine: third" };
static braid_error_domain mine = { "mine", -4990, -4992, my_names, NULL };

BT_TEST(a_library_registers_its_domain) {
    BT_STREQ(braid_strerror(-4990), "unknown braid error");
    BT_OK(braid_error_domain_register(&mine));
    BT_OK(braid_error_domain_register(&mine));              /* once is enough; twice is harmless */
    BT_STREQ(braid_strerror(-4990), "mine: first");
    BT_STREQ(braid_strerror(-4991), "unknown braid error");   /* a hole */
    BT_STREQ(braid_strerror(-4992), "mine: third");
    /* Another domain may not name a code already named ... */
    static const char *const clash_names[] = { "clash" };
    static braid_error_domain clash = { "clash", -4992, -4992, clash_names, NULL };
    BT_ERR(braid_error_domain_register(&clash), BRAID_EEXIST);
    static braid_error_domain clash_tls = { "clash", BRAID_ETLS_ALERT, BRAID_ETLS_ALERT, clash_names, NULL };
    BT_ERR(braid_error_domain_register(&clash_tls), BRAID_EEXIST);
    BT_STREQ(braid_strerror(-4992), "mine: third");
    /* ... but may fill a hole. */
    static const char *const hole_names[] = { "hole" };
    static braid_error_domain hole = { "hole", -4991, -4991, hole_names, NULL };
    BT_OK(braid_error_domain_register(&hole));
    BT_STREQ(braid_strerror(-4991), "hole");
    /* Outside braid's range, or upside down: refused. */
    static braid_error_domain bad1 = { "bad", -3999, -4000, clash_names, NULL };
    static braid_error_domain bad2 = { "bad", -4998, -5000, clash_names, NULL };
    static braid_error_domain bad3 = { "bad", -4993, -4992, clash_names, NULL };
    BT_ERR(braid_error_domain_register(&bad1), BRAID_EINVAL);
    BT_ERR(braid_error_domain_register(&bad2), BRAID_EINVAL);
    BT_ERR(braid_error_domain_register(&bad3), BRAID_EINVAL);
    int dup = 0;
    BT_TRUE(braid__error_domains_check(&dup));
}
