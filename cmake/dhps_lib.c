/* libdhps.so is made of the module libraries' objects (cmake/DhpsPackage.cmake); CMake
 * wants one source of its own. Defines nothing. */
typedef int dhps_lib_empty_unit;
