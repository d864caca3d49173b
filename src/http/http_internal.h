/* What server.c offers the other files of the HTTP module (internal, never
 * installed). The static file handler (static.c) is a user of the server:
 * it answers through <braid/http.h> (braid_http_request_respond_file) and needs
 * only this beyond it. */
#ifndef BRAID_HTTP_INTERNAL_H
#define BRAID_HTTP_INTERNAL_H

#include <braid/http.h>

/* braid_http_server_route, with arg freed by arg_free (if not NULL) when the
 * server is freed. On failure arg stays the caller's. */
int braid__http_route_owned(braid_http_server *s, const char *method, const char *path, unsigned flags,
                            braid_http_handler_fn h, void *arg, void (*arg_free)(void *arg));

#endif
