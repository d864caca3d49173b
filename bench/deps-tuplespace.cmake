# tuplespace: the Redis peer's client is hiredis (libhiredis-dev); without it
# the experiment still builds and notes that its Redis rows were skipped.
pkg_check_modules(BENCH_HIREDIS IMPORTED_TARGET hiredis)
if(BENCH_HIREDIS_FOUND)
  target_link_libraries(braid-bench PRIVATE PkgConfig::BENCH_HIREDIS)
  target_compile_definitions(braid-bench PRIVATE BENCH_HAVE_HIREDIS=1)
else()
  message(STATUS "braid-bench: hiredis not found (libhiredis-dev); the tuplespace Redis peer will be skipped")
endif()
