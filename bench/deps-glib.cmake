# The glib experiment links libbraid-glib when it was built (GLib found).
if(TARGET braid_glib_static)
  target_link_libraries(braid-bench PRIVATE braid_glib_static)
  target_compile_definitions(braid-bench PRIVATE BENCH_HAVE_GLIB=1)
endif()
