# Installable dhps (issue 11): libdhps.so.<major> (public API only, private deps linked
# in), libdhps.a (every module's objects), install() rules, dhps.pc, the CMake package
# (find_package(dhps): dhps::dhps, dhps::dhps_static) and a CPack .deb. Included from
# the top-level CMakeLists.txt after the modules. Checked by tests/install/install-test.sh.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# The modules that go into libdhps, in link order (all of them: client side and server).
set(DHPS_LIB_MODULES dhps_client dhps_server dhps_wal dhps_coord dhps_cluster dhps_route dhps_rpc dhps_store
    dhps_common)
# Their private dependencies, linked into libdhps.so; pkg-config names for dhps.pc.
set(DHPS_LIB_PC_REQUIRES "jansson libssl libcrypto libcurl libibverbs libmicrohttpd libxxhash")
set(DHPS_LIB_SYS_LIBS pthread rt m)

option(DHPS_SHARED "build libdhps.so (off in fuzz builds)" ON)
if(DHPS_FUZZ)
  set(DHPS_SHARED OFF)
endif()

set(_dhps_objs "")
foreach(t ${DHPS_LIB_MODULES})
  list(APPEND _dhps_objs $<TARGET_OBJECTS:${t}>)
endforeach()

if(DHPS_SHARED)
  pkg_check_modules(DHPS_LIB_DEPS REQUIRED IMPORTED_TARGET jansson libssl libcrypto libcurl libibverbs
                    libmicrohttpd libxxhash)
  # Exports: exactly the symbols listed in cmake/dhps.map (the functions and variables
  # declared in include/dhps/*.h); everything else (client_*, srv_*, rpc internals,
  # static helpers of each module) is made local by the version script's "local: *".
  # A version script rather than -fvisibility=hidden + a DHPS_API macro: the same module
  # objects also build the static archives the binaries and tests link, and the public
  # headers stay free of export annotations. tests/install/check-exports.sh checks it.
  # target dhps_shared (the target "dhps" is the command-line tool), file libdhps.so
  add_library(dhps_shared SHARED ${PROJECT_SOURCE_DIR}/cmake/dhps_lib.c ${_dhps_objs})
  set_target_properties(dhps_shared PROPERTIES
    OUTPUT_NAME dhps VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR}
    LINK_DEPENDS ${PROJECT_SOURCE_DIR}/cmake/dhps.map)
  target_include_directories(dhps_shared INTERFACE
    $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>)
  target_link_libraries(dhps_shared PRIVATE PkgConfig::DHPS_LIB_DEPS Threads::Threads rt m)
  target_link_options(dhps_shared PRIVATE
    -Wl,--version-script=${PROJECT_SOURCE_DIR}/cmake/dhps.map)
  if(DHPS_SANITIZE STREQUAL "")
    target_link_options(dhps_shared PRIVATE -Wl,--no-undefined)
  endif()
  add_dependencies(dhps_shared ${DHPS_LIB_MODULES})
  install(TARGETS dhps_shared LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
endif()

# libdhps.a: one archive of every module's objects (the module archives stay for the
# build's own binaries and tests).
set(_dhps_static ${PROJECT_BINARY_DIR}/libdhps.a)
set(_mri "create ${_dhps_static}\n")
foreach(t ${DHPS_LIB_MODULES})
  string(APPEND _mri "addlib $<TARGET_FILE:${t}>\n")
endforeach()
string(APPEND _mri "save\nend\n")
file(GENERATE OUTPUT ${PROJECT_BINARY_DIR}/libdhps.mri CONTENT "${_mri}")
set(_dhps_static_deps "")
foreach(t ${DHPS_LIB_MODULES})
  list(APPEND _dhps_static_deps $<TARGET_FILE:${t}>)
endforeach()
add_custom_command(OUTPUT ${_dhps_static}
  COMMAND ${CMAKE_COMMAND} -E rm -f ${_dhps_static}
  COMMAND ${CMAKE_AR} -M < ${PROJECT_BINARY_DIR}/libdhps.mri
  DEPENDS ${DHPS_LIB_MODULES} ${_dhps_static_deps}
  COMMENT "combining the module archives into libdhps.a" VERBATIM)
add_custom_target(dhps_static_archive ALL DEPENDS ${_dhps_static})
install(FILES ${_dhps_static} DESTINATION ${CMAKE_INSTALL_LIBDIR})

# Headers, binaries.
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/dhps DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.h")
foreach(b dhps dhps-server)
  if(TARGET ${b})
    install(TARGETS ${b} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  endif()
endforeach()
# dhps-bench links absl and DPDK: installed only on request, never packaged by default.
option(DHPS_INSTALL_BENCH "install dhps-bench too" OFF)
if(DHPS_INSTALL_BENCH AND TARGET dhps-bench)
  install(TARGETS dhps-bench RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

# pkg-config: relocatable (prefix from the .pc file's own place, whatever LIBDIR's depth).
file(RELATIVE_PATH DHPS_PC_UP /p/${CMAKE_INSTALL_LIBDIR}/pkgconfig /p)
string(REPLACE ";" " -l" _sys "-l${DHPS_LIB_SYS_LIBS}")
configure_file(${PROJECT_SOURCE_DIR}/packaging/dhps.pc.in ${PROJECT_BINARY_DIR}/dhps.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/dhps.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# CMake package.
set(DHPS_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/dhps)
configure_package_config_file(${PROJECT_SOURCE_DIR}/packaging/dhpsConfig.cmake.in
  ${PROJECT_BINARY_DIR}/dhpsConfig.cmake INSTALL_DESTINATION ${DHPS_CMAKE_DIR}
  PATH_VARS CMAKE_INSTALL_LIBDIR CMAKE_INSTALL_INCLUDEDIR)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/dhpsConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/dhpsConfig.cmake ${PROJECT_BINARY_DIR}/dhpsConfigVersion.cmake
        DESTINATION ${DHPS_CMAKE_DIR})

# Service files: the systemd unit and the default config. Installed under the prefix
# (<prefix>/etc/dhps, <prefix>/lib/systemd/system), except for the /usr prefix (the .deb)
# where they go to /etc/dhps and /lib/systemd/system. Decided at install time, since
# CPack installs with prefix /usr into a staging DESTDIR.
install(CODE "
  if(CMAKE_INSTALL_PREFIX STREQUAL \"/usr\")
    set(_dhps_etc /etc/dhps)
    set(_dhps_unit /lib/systemd/system)
  else()
    set(_dhps_etc \"\${CMAKE_INSTALL_PREFIX}/etc/dhps\")
    set(_dhps_unit \"\${CMAKE_INSTALL_PREFIX}/lib/systemd/system\")
  endif()
  file(INSTALL DESTINATION \"\${_dhps_etc}\" TYPE FILE
       FILES \"${PROJECT_SOURCE_DIR}/packaging/server.json\")
  file(INSTALL DESTINATION \"\${_dhps_unit}\" TYPE FILE
       FILES \"${PROJECT_SOURCE_DIR}/packaging/dhps-server.service\")
")

# Debian package: dhps_<version>_amd64.deb (cpack -G DEB in the build dir).
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME dhps)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "dhps maintainers <dhps@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "parameter server for online inference: dhps-server, dhps CLI, libdhps, headers")
set(CPACK_SET_DESTDIR ON)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_INSTALL_PREFIX /usr) # with CPACK_SET_DESTDIR, the prefix CPack installs with
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "passwd")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${PROJECT_SOURCE_DIR}/packaging/debian/conffiles
    ${PROJECT_SOURCE_DIR}/packaging/debian/postinst
    ${PROJECT_SOURCE_DIR}/packaging/debian/prerm
    ${PROJECT_SOURCE_DIR}/packaging/debian/postrm)
include(CPack)
