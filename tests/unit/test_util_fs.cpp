#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>

#include "util/atomic_file.hpp"
#include "util/error.hpp"
#include "util/fs.hpp"

using namespace ckpt;
namespace fs = std::filesystem;

namespace {

// A pid that no process has now: a child that has exited and been reaped.
pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  ::waitpid(pid, nullptr, 0);
  return pid;
}

void age(const fs::path& path) {
  fs::last_write_time(path, fs::file_time_type::clock::now() - std::chrono::minutes(5));
}

}  // namespace

TEST_CASE("clear_abandoned_temporaries removes only stale temporaries of dead writers, of the name asked") {
  const fs::path dir = fs::temp_directory_path() / ("ckpt-fs-test-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string dead = std::to_string(dead_pid());
  const std::string alive = std::to_string(::getpid());
  const fs::path stale_file = dir / (".out.tmp-" + dead + "-1");
  const fs::path stale_dir = dir / (".out.tmp-" + dead + "-2");
  const fs::path recent = dir / (".out.tmp-" + dead + "-3");
  const fs::path live = dir / (".out.tmp-" + alive + "-4");
  const fs::path other_name = dir / (".other.tmp-" + dead + "-5");
  const fs::path not_temporary = dir / ".out.tmp-x";
  for (const auto& p : {stale_file, recent, live, other_name, not_temporary}) std::ofstream(p) << "x";
  fs::create_directories(stale_dir / "inner");
  std::ofstream(stale_dir / "inner" / "f") << "x";
  for (const auto& p : {stale_file, stale_dir, live, other_name, not_temporary}) age(p);

  CHECK(fs_util::clear_abandoned_temporaries(dir.string(), "out") == 2);
  CHECK_FALSE(fs::exists(stale_file));
  CHECK_FALSE(fs::exists(stale_dir));
  CHECK(fs::exists(recent));         // modified within the minute: perhaps a writer on another host
  CHECK(fs::exists(live));           // its writer runs
  CHECK(fs::exists(other_name));     // another destination's
  CHECK(fs::exists(not_temporary));  // no pid in the name

  fs_util::clear_abandoned_temporaries_of((dir / "other").string());
  CHECK_FALSE(fs::exists(other_name));
  CHECK(fs_util::clear_abandoned_temporaries(dir.string()) == 0);
  fs::remove_all(dir);
}

TEST_CASE("a destination written with a trailing separator is the entry it names") {
  CHECK(fs_util::entry_path("a/out/") == fs::path("a/out"));
  CHECK(fs_util::entry_path("a/./out") == fs::path("a/out"));
  CHECK(fs_util::entry_path("out") == fs::path("out"));

  const fs::path dir = fs::temp_directory_path() / ("ckpt-fs-build-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string left_by_killed_builder = ".out.tmp-" + std::to_string(dead_pid()) + "-0";
  fs::create_directories(dir / left_by_killed_builder);
  age(dir / left_by_killed_builder);
  fs_util::build_directory((dir / "out").string() + "/",
                           [](const std::string& staging) { std::ofstream(fs::path(staging) / "f") << "x"; });
  CHECK(fs::exists(dir / "out" / "f"));
  std::size_t entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++entries;
  CHECK(entries == 1);  // the staging directory was beside `out`, and renamed to it; the stale one cleared
  const std::string stale = ".out.tmp-" + std::to_string(dead_pid()) + "-1";
  fs::create_directories(dir / stale);
  age(dir / stale);
  fs_util::clear_abandoned_temporaries_of((dir / "out").string() + "/");
  CHECK_FALSE(fs::exists(dir / stale));
  fs::remove_all(dir);
}

TEST_CASE("errors of writing name what the user asked for, never a temporary beside it") {
  const fs::path dir = fs::temp_directory_path() / ("ckpt-fs-names-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string out = (dir / "out").string();
  for (const char* inside : {"", "/f"}) {
    CAPTURE(inside);
    try {
      fs_util::build_directory(out, [&](const std::string& staging) {
        throw Error(ErrorKind::io, staging + inside, "", "write: Input/output error");
      });
      FAIL("built");
    } catch (const Error& e) {
      CHECK(e.path() == out + inside);
      CHECK(e.kind() == ErrorKind::io);
    }
    CHECK_FALSE(fs::exists(out));
  }
  try {
    AtomicFile file((dir / "missing" / "f").string());
    FAIL("created");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::not_found);
    CHECK(std::string(e.what()) == (dir / "missing" / "f").string() + ": cannot create: its directory " +
                                       (dir / "missing").string() + " does not exist");
  }
  fs_util::create_parent_directories((dir / "a" / "b" / "out.bin").string());
  CHECK(fs::is_directory(dir / "a" / "b"));
  CHECK_FALSE(fs::exists(dir / "a" / "b" / "out.bin"));
  fs_util::require_directory((dir / "a").string());
  CHECK_THROWS_WITH_AS(fs_util::require_directory((dir / "none").string()),
                       ((dir / "none").string() + ": no such directory").c_str(), Error);
  std::ofstream(dir / "file") << "x";
  CHECK_THROWS_WITH_AS(fs_util::require_directory((dir / "file").string()),
                       ((dir / "file").string() + ": is not a directory").c_str(), Error);
  CHECK_THROWS_AS(fs_util::create_parent_directories((dir / "file" / "x" / "out").string()), Error);
  fs::remove_all(dir);
}

TEST_CASE("link_tree hard-links every regular file below a directory, subdirectories too, and refuses a symlink") {
  const fs::path dir = fs::temp_directory_path() / ("ckpt-fs-link-test-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const fs::path from = dir / "from";
  fs::create_directories(from / "sub" / "deeper");
  std::ofstream(from / "a.bin") << "a";
  std::ofstream(from / "sub" / "b.bin") << "b";
  std::ofstream(from / "sub" / "deeper" / "c.bin") << "c";
  CHECK(fs_util::regular_files_below(from.string()) ==
        std::vector<std::string>{"a.bin", "sub/b.bin", "sub/deeper/c.bin"});

  fs::create_directories(dir / "to");
  const auto linked = fs_util::link_tree(from.string(), (dir / "to").string());
  CHECK(linked.files == 3);
  CHECK(linked.hard_linked == 3);
  for (const char* name : {"a.bin", "sub/b.bin", "sub/deeper/c.bin"}) {
    CHECK(fs::equivalent(from / name, dir / "to" / name));
  }
  CHECK(fs::hard_link_count(from / "sub" / "deeper" / "c.bin") == 2);

  fs::create_symlink("../a.bin", from / "sub" / "link");
  fs::create_directories(dir / "again");
  try {
    fs_util::link_tree(from.string(), (dir / "again").string());
    FAIL("a symlink was linked or followed");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::unsupported);
    CHECK(e.path() == (from / "sub" / "link").string());
  }
  fs::remove_all(dir);
}

TEST_CASE(
    "OpenDirectory opens only a directory, never through a symlink unless asked, and types every entry without "
    "following") {
  const fs::path dir = fs::temp_directory_path() / ("ckpt-open-directory-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "sub");
  std::ofstream(dir / "file") << "x";
  fs::create_directory_symlink(dir / "sub", dir / "link");
  REQUIRE(::mkfifo((dir / "fifo").c_str(), 0600) == 0);

  auto opened = fs_util::OpenDirectory::open(AT_FDCWD, dir.string(), false);
  REQUIRE(opened);
  auto entries = opened->entries(dir.string());
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  REQUIRE(entries.size() == 4);
  CHECK((entries[0].name == "fifo" && entries[0].type == DT_FIFO));
  CHECK((entries[1].name == "file" && entries[1].type == DT_REG));
  CHECK((entries[2].name == "link" && entries[2].type == DT_LNK));
  CHECK((entries[3].name == "sub" && entries[3].type == DT_DIR));
  CHECK(opened->entries(dir.string()).size() == 4);  // read again from the start

  CHECK(fs_util::OpenDirectory::open(opened->fd(), "sub", false));
  CHECK(!fs_util::OpenDirectory::open(opened->fd(), "link", false));
  CHECK((errno == ENOTDIR || errno == ELOOP));  // Linux says ENOTDIR when O_DIRECTORY meets the link itself
  CHECK(fs_util::OpenDirectory::open(opened->fd(), "link", true));
  CHECK(!fs_util::OpenDirectory::open(opened->fd(), "file", false));
  CHECK(errno == ENOTDIR);
  CHECK(!fs_util::OpenDirectory::open(opened->fd(), "fifo", true));  // refused at once, never waited on
  CHECK(errno == ENOTDIR);
  CHECK(!fs_util::OpenDirectory::open(opened->fd(), "missing", false));
  CHECK(errno == ENOENT);
  fs::remove_all(dir);
}
