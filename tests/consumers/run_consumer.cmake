# Configures, builds and runs a consumer project in a clean build directory.
# -DSOURCE, -DBINARY, -DHERALD_SOURCE, -DCXX, and for find_package also -DINSTALL_PREFIX.
file(REMOVE_RECURSE ${BINARY})
set(extra "")
if(DEFINED INSTALL_PREFIX)
  file(REMOVE_RECURSE ${INSTALL_PREFIX} ${BINARY}-herald)
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${HERALD_SOURCE} -B ${BINARY}-herald
      -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_INSTALL_PREFIX=${INSTALL_PREFIX}
      -DHERALD_BUILD_TESTS=OFF -DHERALD_BUILD_EXAMPLES=OFF -DHERALD_INSTALL=ON
    COMMAND_ERROR_IS_FATAL ANY)
  execute_process(COMMAND ${CMAKE_COMMAND} --install ${BINARY}-herald COMMAND_ERROR_IS_FATAL ANY)
  if(NOT EXISTS ${INSTALL_PREFIX}/share/cmake/herald/heraldConfigVersion.cmake)
    message(FATAL_ERROR "install did not write share/cmake/herald/heraldConfigVersion.cmake")
  endif()
  set(extra -DCMAKE_PREFIX_PATH=${INSTALL_PREFIX})
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE} -B ${BINARY}
    -DCMAKE_CXX_COMPILER=${CXX} -DHERALD_SOURCE=${HERALD_SOURCE} ${extra}
  COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BINARY} COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${BINARY}/consumer RESULT_VARIABLE rc OUTPUT_VARIABLE out)
message("${out}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "consumer exited with ${rc}")
endif()
