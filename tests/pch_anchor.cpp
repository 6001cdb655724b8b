// Compiles the precompiled header shared by the tests (see tests/CMakeLists.txt).
int herald_test_pch_anchor() {
  return 0;
}
