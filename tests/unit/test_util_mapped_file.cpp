#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
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

TEST_CASE("a file that loses part of its last page is caught too (those bytes read as zeros, without a fault)") {
  const fs::path dir = fs::temp_directory_path() / ("ckpt-map-page-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path input = dir / "input.bin";
  std::ofstream(input) << std::string(3000, 'x');
  const int status = in_child([&] {
    const MappedFile map(input.string());
    fs::resize_file(input, 1000);
    if (map.bytes()[2000] != 0) return 10;
    try {
      ensure_no_mapped_file_shrank();
      return 11;
    } catch (const Error& e) {
      return e.path() == input.string() ? 0 : 12;
    }
  });
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  fs::remove_all(dir);
}

#ifndef __has_feature
#define __has_feature(x) 0
#endif

namespace {

// A fault in a map that is not a MappedFile: a file mapped directly, then cut, then read past its new end.
void fault_outside_our_maps(const fs::path& dir) {
  const fs::path raw = dir / "raw.bin";
  std::ofstream(raw) << std::string(2 * 4096, 'r');
  const int fd = ::open(raw.c_str(), O_RDONLY);
  auto* bytes = static_cast<const volatile char*>(::mmap(nullptr, 2 * 4096, PROT_READ, MAP_PRIVATE, fd, 0));
  fs::resize_file(raw, 0);
  (void)bytes[4096];
}

// Another component's SIGBUS handler: it repairs its own fault (zero pages) and returns.
std::atomic<int> g_foreign_faults{0};
void foreign_handler(int, siginfo_t* info, void*) {
  const auto page = reinterpret_cast<std::uintptr_t>(info->si_addr) & ~std::uintptr_t{4095};
  ::mmap(reinterpret_cast<void*>(page), 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  ++g_foreign_faults;
}

// The scenarios below need a process whose SIGBUS handlers are as a fresh program's: they run in a new
// execution of this test binary, selected by CKPT_TEST_SIGBUS. Returns the child's wait status.
int run_fresh(const char* scenario) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setenv("CKPT_TEST_SIGBUS", scenario, 1);
    ::execl("/proc/self/exe", "ckpt_unit_tests", "--test-case=a SIGBUS outside our maps*", "--no-intro", nullptr);
    ::_exit(99);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

int fresh_scenario(const std::string& scenario) {
  const fs::path dir = fs::temp_directory_path() / ("ckpt-map-bus-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path ours = dir / "ours.bin";
  std::ofstream(ours) << std::string(2 * 4096, 'o');
  if (scenario == "chained") {
    struct sigaction action {};
    action.sa_sigaction = foreign_handler;
    action.sa_flags = SA_SIGINFO;
    ::sigaction(SIGBUS, &action, nullptr);
  }
  MappedFile map(ours.string());  // installs our handler, chained to whatever was there
  fault_outside_our_maps(dir);    // default: dies here
  if (g_foreign_faults != 1) return 10;
  // The foreign handler was called, and ours is still installed: our own map's shrink is still caught.
  fs::resize_file(ours, 0);
  if (map.bytes()[4096] != 0) return 11;
  try {
    ensure_no_mapped_file_shrank();
    return 12;
  } catch (const Error&) {}
  fs::remove_all(dir);
  return 42;
}

}  // namespace

TEST_CASE("a SIGBUS outside our maps goes to the handler before ours, or kills as it would have") {
  if (const char* scenario = std::getenv("CKPT_TEST_SIGBUS")) ::_exit(fresh_scenario(scenario));
  const int chained = run_fresh("chained");
  CHECK(WIFEXITED(chained));
  CHECK(WEXITSTATUS(chained) == 42);
  const int alone = run_fresh("default");
  CHECK_FALSE((WIFEXITED(alone) && WEXITSTATUS(alone) == 0));            // killed by it (or, under ASan, reported)
#if !defined(__SANITIZE_ADDRESS__) && !__has_feature(address_sanitizer)  // gcc's spelling, then clang's
  CHECK(WIFSIGNALED(alone));
  if (WIFSIGNALED(alone)) CHECK(WTERMSIG(alone) == SIGBUS);
#endif
}

TEST_CASE("a FIFO or a socket is refused as not a regular file, without waiting for a writer") {
  const fs::path dir = fs::temp_directory_path() / ("ckpt-odd-files-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string fifo = (dir / "pytorch_model.bin").string();
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const std::string socket_path = (dir / "model.safetensors").string();
  const int sock = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::snprintf(address.sun_path, sizeof address.sun_path, "%s", socket_path.c_str());
  REQUIRE(::bind(sock, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
  for (const std::string& path : {fifo, socket_path}) {
    CAPTURE(path);
    // In a child with a deadline: opening a FIFO the blocking way would wait forever.
    const int status = in_child([&] {
      ::alarm(30);
      try {
        ReadOnlyFile file(path);
      } catch (const Error& e) {
        return e.kind() == ErrorKind::unsupported &&
                       std::string(e.what()).find("not a regular file") != std::string::npos
                   ? 0
                   : 2;
      }
      return 1;
    });
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  ::close(sock);
  fs::remove_all(dir);
}
