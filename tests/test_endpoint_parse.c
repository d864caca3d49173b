/* Endpoint strings: the interface= field of a server, checked with the
 * net layer's public address parser (braid_address_from_numeric) since
 * the endpoint module stopped reaching into the net layer's internals. */
#include "harness.h"

static int parse(const char *desc) {
    braid_endpoint ep;
    char err[256];
    return braid_endpoint_parse_server(desc, &ep, err, sizeof err);
}

BT_TEST(interface_must_be_numeric_and_of_the_family) {
    BT_OK(parse("tcp:80:interface=127.0.0.1"));
    BT_OK(parse("tcp:80:interface=\\:\\:1"));                 /* tcp: either family */
    BT_OK(parse("tcp6:80:interface=\\:\\:1"));
    BT_OK(parse("tcp6:80:interface=[\\:\\:1]"));
    BT_OK(parse("tcp6:80:interface=\\:\\:ffff\\:127.0.0.1"));  /* v4-mapped is IPv6 */
    BT_ERR(parse("tcp6:80:interface=127.0.0.1"), BRAID_EBAD_ENDPOINT);   /* v4 on tcp6 */
    BT_ERR(parse("tcp:80:interface=localhost"), BRAID_EBAD_ENDPOINT);    /* not numeric */
    BT_ERR(parse("tcp6:80:interface=localhost"), BRAID_EBAD_ENDPOINT);
}

BT_TEST(empty_interface_means_any) {
    braid_endpoint ep;
    BT_OK(braid_endpoint_parse_server("tcp:80:interface=", &ep, NULL, 0));
    BT_STREQ(ep.host, "");
    BT_OK(braid_endpoint_parse_server("tcp6:80:interface=", &ep, NULL, 0));
    BT_STREQ(ep.host, "");
}

BT_TEST(bind_address_must_be_numeric) {
    braid_endpoint ep;
    BT_OK(braid_endpoint_parse_client("tcp:host=h:port=1:bindAddress=127.0.0.1\\:5000", &ep, NULL, 0));
    BT_STREQ(ep.bind_host, "127.0.0.1");
    BT_EQ(ep.bind_port, 5000);
    BT_OK(braid_endpoint_parse_client("tcp:host=h:port=1:bindAddress=[\\:\\:1]\\:5000", &ep, NULL, 0));
    BT_ERR(braid_endpoint_parse_client("tcp:host=h:port=1:bindAddress=example.com", &ep, NULL, 0),
           BRAID_EBAD_ENDPOINT);
}
