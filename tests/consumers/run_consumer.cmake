# Builds and runs a consumer program (consumer.cpp) the three ways README.md tells users to:
# with the README's own `add_subdirectory` or `find_package` CMake lines (taken from its ```cmake
# block, so the snippet itself is what gets tested), or with nothing but `-I include`.
#   cmake -DWAY=add_subdirectory|find_package|plain_include -DREADME=... -DHERALD_SOURCE=...
#         -DBINARY=... -DCXX=... -P run_consumer.cmake
cmake_minimum_required(VERSION 3.25)
foreach(var WAY README HERALD_SOURCE BINARY CXX)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_consumer.cmake needs -D${var}=...")
  endif()
endforeach()
set(consumer_cpp ${CMAKE_CURRENT_LIST_DIR}/consumer.cpp)
file(REMOVE_RECURSE ${BINARY})
file(MAKE_DIRECTORY ${BINARY})

if(WAY STREQUAL "plain_include")
  # "add include/ to your include path and compile with -std=c++20 -pthread"
  execute_process(COMMAND ${CXX} -std=c++20 -pthread -I ${HERALD_SOURCE}/include ${consumer_cpp}
      -o ${BINARY}/consumer
    COMMAND_ERROR_IS_FATAL ANY)
else()
  # The README's ```cmake block: the add_subdirectory part, a blank line, the find_package part.
  file(READ ${README} readme)
  string(FIND "${readme}" "```cmake\n" begin)
  if(begin EQUAL -1)
    message(FATAL_ERROR "README.md has no ```cmake block")
  endif()
  math(EXPR begin "${begin} + 9")
  string(SUBSTRING "${readme}" ${begin} -1 block)
  string(FIND "${block}" "```" end)
  string(SUBSTRING "${block}" 0 ${end} block)
  string(FIND "${block}" "\n\n" split)
  if(split EQUAL -1)
    message(FATAL_ERROR "README.md's ```cmake block should hold two parts split by a blank line")
  endif()
  if(WAY STREQUAL "add_subdirectory")
    string(SUBSTRING "${block}" 0 ${split} snippet)
  else()
    math(EXPR split "${split} + 2")
    string(SUBSTRING "${block}" ${split} -1 snippet)
  endif()
  if(NOT snippet MATCHES "${WAY}\\(")
    message(FATAL_ERROR "README.md's ```cmake part for ${WAY} does not call ${WAY}():\n${snippet}")
  endif()
  message("README snippet under test:\n${snippet}")

  set(project_dir ${BINARY}/project)
  file(MAKE_DIRECTORY ${project_dir})
  file(COPY ${consumer_cpp} DESTINATION ${project_dir})
  file(WRITE ${project_dir}/CMakeLists.txt
    "cmake_minimum_required(VERSION 3.25)\n"
    "project(readme_consumer LANGUAGES CXX)\n"
    "add_executable(your_app consumer.cpp)\n"
    "${snippet}")
  set(extra "")
  if(WAY STREQUAL "add_subdirectory")
    # "vendored copy or git submodule": herald's tree as ./herald next to the project.
    file(CREATE_LINK ${HERALD_SOURCE} ${project_dir}/herald SYMBOLIC)
  else()
    # "after cmake --install <build> --prefix <prefix>"
    set(prefix ${BINARY}/prefix)
    execute_process(COMMAND ${CMAKE_COMMAND} -S ${HERALD_SOURCE} -B ${BINARY}/herald-build
        -DCMAKE_CXX_COMPILER=${CXX} -DHERALD_BUILD_TESTS=OFF -DHERALD_BUILD_EXAMPLES=OFF
        -DHERALD_INSTALL=ON
      COMMAND_ERROR_IS_FATAL ANY)
    execute_process(COMMAND ${CMAKE_COMMAND} --install ${BINARY}/herald-build --prefix ${prefix}
      COMMAND_ERROR_IS_FATAL ANY)
    if(NOT EXISTS ${prefix}/share/cmake/herald/heraldConfigVersion.cmake)
      message(FATAL_ERROR "install did not write share/cmake/herald/heraldConfigVersion.cmake")
    endif()
    set(extra -DCMAKE_PREFIX_PATH=${prefix})
  endif()
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${project_dir} -B ${BINARY}/build
      -DCMAKE_CXX_COMPILER=${CXX} ${extra}
    COMMAND_ERROR_IS_FATAL ANY)
  execute_process(COMMAND ${CMAKE_COMMAND} --build ${BINARY}/build COMMAND_ERROR_IS_FATAL ANY)
  file(COPY_FILE ${BINARY}/build/your_app ${BINARY}/consumer)
endif()

execute_process(COMMAND ${BINARY}/consumer RESULT_VARIABLE rc OUTPUT_VARIABLE out)
message("${out}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "consumer exited with ${rc}")
endif()
