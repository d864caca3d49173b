/* braid.h — everything braid offers, one include.
 * See README.md and docs/ for a tour; each header below opens with what its
 * module is for and an example. */
#ifndef BRAID_H
#define BRAID_H
#include <braid/common.h>
#include <braid/loop.h>
#include <braid/time.h>
#include <braid/tls.h>
#include <braid/deferred.h>
#include <braid/protocol.h>
#include <braid/stream.h>
#include <braid/endpoint.h>
#include <braid/framing.h>
#include <braid/dgram.h>
#include <braid/pool.h>
#include <braid/fiber.h>
#include <braid/fstream.h>
#include <braid/stage.h>
#include <braid/http.h>
#include <braid/process.h>
#include <braid/tuplespace.h>
#include <braid/component.h>
#endif
