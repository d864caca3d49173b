# TLS needs OpenSSL 3 (libssl, libcrypto; Debian's libssl-dev). Included by the
# top-level CMakeLists. The libraries are linked by path (not through the
# OpenSSL:: imported targets) so the exported Braid CMake package and the
# static library need nothing beyond libssl/libcrypto being installed.
find_package(OpenSSL 3.0 REQUIRED)
target_include_directories(braid_obj PRIVATE ${OPENSSL_INCLUDE_DIR})
list(APPEND BRAID_EXTRA_LIBS ${OPENSSL_SSL_LIBRARY} ${OPENSSL_CRYPTO_LIBRARY})
if(BRAID_PC_REQUIRES)
  set(BRAID_PC_REQUIRES "${BRAID_PC_REQUIRES} libssl libcrypto")
else()
  set(BRAID_PC_REQUIRES "libssl libcrypto")
endif()
