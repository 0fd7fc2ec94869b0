#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "util/atomic_file.hpp"
#include "util/error.hpp"
#include "util/mapped_file.hpp"

using namespace ckpt;
namespace fs = std::filesystem;

namespace {

// Runs `body` in a child process (a shrunk map marks the whole process) and returns its exit status.
template <typename Body>
int in_child(Body body) {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(body());
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

}  // namespace

TEST_CASE("a file that shrinks under its map reads as zeros, and nothing is committed after it") {
  const fs::path dir = fs::temp_directory_path() / ("ckpt-map-test-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path input = dir / "input.bin";
  std::ofstream(input) << std::string(3 * 4096, 'x');

  const int status = in_child([&] {
    MappedFile map(input.string());
    ensure_no_mapped_file_shrank();  // nothing shrank yet: no throw
    fs::resize_file(input, 100);
    if (map.bytes()[0] != 'x' || map.bytes()[2 * 4096 + 7] != 0 || map.bytes()[3 * 4096 - 1] != 0) return 10;
    try {
      AtomicFile out((dir / "out.bin").string());
      out.write(map.bytes().first(16));
      out.commit();
      return 11;
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::io || e.path() != input.string()) return 12;
      if (std::string(e.what()).find("shrank while being read") == std::string::npos) return 13;
    }
    if (fs::exists(dir / "out.bin")) return 14;
    { const MappedFile released = std::move(map); }
    try {
      ensure_no_mapped_file_shrank();
      return 15;  // it stays recorded after its map is gone
    } catch (const Error& e) {
      if (e.path() != input.string()) return 16;
    }
    return 0;
  });
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  fs::remove_all(dir);
}

TEST_CASE("a SIGBUS outside any map is not swallowed") {
  const fs::path dir = fs::temp_directory_path() / ("ckpt-map-bus-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path input = dir / "input.bin";
  std::ofstream(input) << std::string(4096, 'x');
  const int status = in_child([&] {
    MappedFile map(input.string());  // installs the handler
    ::raise(SIGBUS);
    return 0;
  });
  CHECK_FALSE((WIFEXITED(status) && WEXITSTATUS(status) == 0));  // killed by it (or, under ASan, reported)
  fs::remove_all(dir);
}
