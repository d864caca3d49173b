# io_uring (liburing, Debian's liburing-dev): the io_uring poller
# (poll/uring.c) and the loop's io_uring completion service
# (loop/completion_uring.c) compile to nothing without it
# (#ifdef BRAID_HAVE_URING), and loop/completion_none.c stands in. Included
# by the top-level CMakeLists; URING_FOUND is also read by tests/.
pkg_check_modules(URING IMPORTED_TARGET liburing)
if(URING_FOUND)
  target_compile_definitions(braid_obj PRIVATE BRAID_HAVE_URING=1)
  target_include_directories(braid_obj PRIVATE ${URING_INCLUDE_DIRS})
  list(APPEND BRAID_EXTRA_LIBS PkgConfig::URING)
  if(BRAID_PC_REQUIRES)
    set(BRAID_PC_REQUIRES "${BRAID_PC_REQUIRES} liburing")
  else()
    set(BRAID_PC_REQUIRES "liburing")
  endif()
endif()
