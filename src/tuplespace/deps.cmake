# The tuple space keeps a space in an SQLite file when asked
# (braid_tuplespace_options.path). Optional: without libsqlite3 (Debian's
# libsqlite3-dev) the module builds and such a space fails with
# BRAID_ENOSYS. Included by the top-level CMakeLists.
pkg_check_modules(SQLITE3 IMPORTED_TARGET sqlite3)
if(SQLITE3_FOUND)
  target_compile_definitions(braid_obj PRIVATE BRAID_HAVE_SQLITE=1)
  target_include_directories(braid_obj PRIVATE ${SQLITE3_INCLUDE_DIRS})
  list(APPEND BRAID_EXTRA_LIBS PkgConfig::SQLITE3)
  if(BRAID_PC_REQUIRES)
    set(BRAID_PC_REQUIRES "${BRAID_PC_REQUIRES} sqlite3")
  else()
    set(BRAID_PC_REQUIRES "sqlite3")
  endif()
endif()
