# The tx experiment links libbraid-db (SQLite, libpq) when it was built.
if(TARGET braid_db_static)
  target_link_libraries(braid-bench PRIVATE braid_db_static)
  target_compile_definitions(braid-bench PRIVATE BENCH_HAVE_DB=1)
endif()
