#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "checkpoint/lock.hpp"
#include "util/error.hpp"

using namespace ckpt;
namespace fs = std::filesystem;

TEST_CASE("the run lock and the trainer's lock never follow a symlink and are regular files only") {
  const fs::path dir = fs::temp_directory_path() / ("ckpt-lock-test-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "run");
  const std::string run = (dir / "run").string();
  for (const char* name : {checkpoint::kLockName, checkpoint::kTrainLockName}) {
    CAPTURE(name);
    const fs::path lock = dir / "run" / name;
    const fs::path outside = dir / "outside";
    fs::create_symlink(outside, lock);  // dangling: following it would create a file outside the run
    try {
      checkpoint::RunLock held(run, false, name);
      FAIL("locked through a symlink");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::unsupported);
      CHECK(std::string(e.what()).find("symlink") != std::string::npos);
    }
    CHECK(!fs::exists(fs::symlink_status(outside)));
    fs::remove(lock);
    REQUIRE(::mkfifo(lock.c_str(), 0600) == 0);
    CHECK_THROWS_AS(checkpoint::RunLock(run, false, name), Error);
    fs::remove(lock);
    { checkpoint::RunLock held(run, false, name); }  // a regular file, created when missing, as before
    CHECK(fs::is_regular_file(fs::symlink_status(lock)));
  }
  fs::remove_all(dir);
}

TEST_CASE("a lock that is held or cannot be taken names the run directory, not its lock file") {
  const fs::path dir = fs::temp_directory_path() / ("ckpt-lock-names-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "run");
  const std::string run = (dir / "run").string();
  checkpoint::RunLock held(run, false);
  try {
    checkpoint::RunLock second(run, false);
    FAIL("locked twice");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::locked);
    CHECK(e.path() == run);
  }
  try {
    checkpoint::RunLock missing((dir / "gone").string(), false);
    FAIL("locked a missing directory");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::not_found);
    CHECK(std::string(e.what()) == (dir / "gone").string() + ": no such directory");
  }
  fs::remove_all(dir);
}
