# reqresp/echo: the peer servers (plain epoll, libuv, libevent) live in
# bench/peers/ and are linked into braid-bench (served with
# `braid-bench serve reqresp --impl epoll|libuv|libevent`).
target_sources(braid-bench PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/peers/reqresp_peers.c)
target_include_directories(braid-bench PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/peers)
