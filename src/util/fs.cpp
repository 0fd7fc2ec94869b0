#include "util/fs.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <system_error>
#include <thread>

#include "util/atomic_file.hpp"
#include "util/error.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::fs_util {

namespace fs = std::filesystem;

bool require_regular_file(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) fail_io(path, "stat", errno);
  if (S_ISREG(st.st_mode)) return true;
  if (S_ISDIR(st.st_mode)) return false;
  throw Error(
      ErrorKind::unsupported, path, "",
      std::string("not a regular file (") + file_type_name(st.st_mode) +
          "); only regular files are read, symlinks are not followed (cp -rL makes a copy that holds their targets)");
}

void fsync_directory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail_io(dir, "open directory", errno);
  if (::fsync(fd) != 0 && errno != EINVAL) {
    int e = errno;
    ::close(fd);
    fail_io(dir, "fsync directory", e);
  }
  ::close(fd);
}

void fsync_files(const std::vector<std::string>& paths) {
  std::vector<int> errors(paths.size(), 0);
  std::atomic<std::size_t> next{0};
  auto work = [&] {
    for (std::size_t i; (i = next.fetch_add(1)) < paths.size();) {
      const int fd = ::open(paths[i].c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        errors[i] = errno;
        continue;
      }
      if (::fsync(fd) != 0) errors[i] = errno;
      ::close(fd);
    }
  };
  // A few workers are enough for the flushes to overlap; when none can be started this thread does it all.
  std::vector<std::thread> workers;
  try {
    for (std::size_t k = 1; k < std::min<std::size_t>(paths.size(), 8); ++k) workers.emplace_back(work);
  } catch (const std::system_error&) {}
  work();
  for (auto& w : workers) w.join();
  for (std::size_t i = 0; i < paths.size(); ++i) {
    if (errors[i] != 0) fail_io(paths[i], "fsync", errors[i]);
  }
}

void exchange(const std::string& from, const std::string& to) {
  const std::filesystem::path parent = std::filesystem::path(to).parent_path();
  const std::string dir = parent.empty() ? "." : parent.string();
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_EXCHANGE) == 0) {
    fsync_directory(dir);
    return;
  }
  if (errno != EINVAL && errno != ENOSYS) fail_io(to, "replace", errno);
  const std::string aside = to + ".old-" + unique_suffix();
  if (::rename(to.c_str(), aside.c_str()) != 0) fail_io(to, "rename", errno);
  if (::rename(from.c_str(), to.c_str()) != 0) {
    const int e = errno;
    ::rename(aside.c_str(), to.c_str());
    fail_io(to, "rename", e);
  }
  if (::rename(aside.c_str(), from.c_str()) != 0) fail_io(to, "move the replaced one aside", errno);
  fsync_directory(dir);
}

std::filesystem::path entry_path(const std::string& path) {
  std::filesystem::path p = std::filesystem::path(path).lexically_normal();
  return p.has_filename() ? p : p.parent_path();
}

void durable_rename(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) fail_io(to, "rename into place", errno);
  const auto parent = std::filesystem::path(to).parent_path();
  fsync_directory(parent.empty() ? "." : parent.string());
}

std::string unique_suffix() {
  static std::atomic<unsigned> counter{0};
  const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
  return std::to_string(::getpid()) + "-" + std::to_string(now) + "-" + std::to_string(counter++);
}

bool is_abandoned_temporary(const std::string& path) {
  const std::string name = std::filesystem::path(path).filename().string();
  const auto marker = name.rfind(".tmp-");
  if (name.empty() || name.front() != '.' || marker == std::string::npos || marker == 0) return false;
  std::size_t end = marker + 5;
  long long pid = 0;
  while (end < name.size() && name[end] >= '0' && name[end] <= '9' && pid < (1LL << 32))
    pid = pid * 10 + (name[end++] - '0');
  if (end == marker + 5 || end >= name.size() || name[end] != '-' || pid <= 0 || pid >= (1LL << 31)) return false;
  if (static_cast<pid_t>(pid) == ::getpid() || ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) return false;
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && std::time(nullptr) - st.st_mtime > 60;
}

std::size_t clear_abandoned_temporaries(const std::string& dir, const std::string& name) {
  const std::string prefix = "." + name;
  std::size_t cleared = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir.empty() ? "." : dir, ec)) {
    const std::string path = entry.path().string();
    if (entry.path().filename().string().rfind(prefix, 0) != 0 || !is_abandoned_temporary(path)) continue;
    remove_tree(path);
    ++cleared;
  }
  return cleared;
}

void clear_abandoned_temporaries_of(const std::string& destination) {
  const std::filesystem::path d = entry_path(destination);
  clear_abandoned_temporaries(d.parent_path().string(), d.filename().string());
}

void replace_symlink(const std::string& target, const std::string& link) {
  const std::filesystem::path link_path(link);
  const std::string temp =
      (link_path.parent_path() / ("." + link_path.filename().string() + ".tmp-" + unique_suffix())).string();
  if (::symlink(target.c_str(), temp.c_str()) != 0) fail_create(link, errno);
  // Checked last, just before the rename, so that the window for anything to appear there is the shortest.
  struct stat existing {};
  if (::lstat(link.c_str(), &existing) == 0 && !S_ISLNK(existing.st_mode)) {
    ::unlink(temp.c_str());
    throw Error(ErrorKind::invalid_argument, link, "",
                std::string("exists and is not a symlink (") + file_type_name(existing.st_mode) +
                    "); only a symlink is replaced");
  }
  if (::rename(temp.c_str(), link.c_str()) != 0) {
    int e = errno;
    ::unlink(temp.c_str());
    fail_io(link, "replace symlink", e);
  }
  fsync_directory(link_path.parent_path().empty() ? "." : link_path.parent_path().string());
}

void copy_file(const std::string& from, const std::string& to) {
  ReadOnlyFile source(from);
  AtomicFile out(to);
  out.copy_from(source, 0, source.size());
  out.commit();
}

bool link_or_copy(const std::string& from, const std::string& to) {
  const std::filesystem::path dest(to);
  const std::string temp = (dest.parent_path() / ("." + dest.filename().string() + ".tmp-" + unique_suffix())).string();
  if (::link(from.c_str(), temp.c_str()) != 0) {
    const int e = errno;
    if (e == ENOENT || e == ENOTDIR) fail_io(from, "hard-link", e);
    if (e != EXDEV && e != EPERM && e != EMLINK) fail_create(to, e);
    copy_file(from, to);
    return false;
  }
  const int renamed = ::rename(temp.c_str(), to.c_str());
  const int e = errno;
  // Renaming onto another link of the same file succeeds without doing anything: the temporary stays.
  ::unlink(temp.c_str());
  if (renamed != 0) fail_io(to, "rename into place", e);
  return true;
}

std::vector<std::string> regular_files_below(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (require_regular_file(it->path().string())) files.push_back(it->path().lexically_relative(dir).generic_string());
  }
  if (ec)
    throw Error(ec == std::errc::no_such_file_or_directory ? ErrorKind::not_found : ErrorKind::io, dir, "",
                "cannot read the directory: " + ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

LinkedTree link_tree(const std::string& from, const std::string& to) {
  const fs::path root(to);
  LinkedTree result;
  std::vector<std::string> directories;  // made here
  for (const auto& name : regular_files_below(from)) {
    std::vector<fs::path> missing;  // the file's parent directories not made yet, innermost first
    for (fs::path relative = fs::path(name).parent_path(); !relative.empty() && !fs::is_directory(root / relative);
         relative = relative.parent_path()) {
      missing.push_back(root / relative);
    }
    for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
      if (::mkdir(it->c_str(), 0755) != 0) fail_create(it->string(), errno);
      directories.push_back(it->string());
    }
    if (link_or_copy((fs::path(from) / name).string(), (root / name).string())) ++result.hard_linked;
    ++result.files;
  }
  // A link is only a directory entry: each directory's entries must be durable before the caller publishes `to`.
  for (const auto& directory : directories) fsync_directory(directory);
  return result;
}

std::optional<OpenDirectory> OpenDirectory::open(int parent, const std::string& name, bool follow) {
  const int fd =
      ::openat(parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NONBLOCK | (follow ? 0 : O_NOFOLLOW));
  if (fd < 0) return std::nullopt;
  DIR* dir = ::fdopendir(fd);
  if (dir == nullptr) {
    const int e = errno;
    ::close(fd);
    errno = e;
    return std::nullopt;
  }
  return OpenDirectory(dir);
}

std::vector<DirectoryEntry> OpenDirectory::entries(const std::string& path) {
  ::rewinddir(dir_.get());
  std::vector<DirectoryEntry> found;
  errno = 0;
  while (const dirent* entry = ::readdir(dir_.get())) {
    const std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    unsigned char type = entry->d_type;
    struct stat st {};
    if (type == DT_UNKNOWN && ::fstatat(fd(), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0) type = IFTODT(st.st_mode);
    found.push_back({name, type});
    errno = 0;
  }
  if (errno != 0) throw Error(ErrorKind::io, path, "", std::string("cannot list directory: ") + std::strerror(errno));
  return found;
}

void remove_tree(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);  // removes symlinks themselves, never what they point to
  if (ec && ec != std::errc::no_such_file_or_directory) {
    throw Error(ErrorKind::io, path, "", "cannot remove: " + ec.message());
  }
}

void require_directory(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) throw Error(ErrorKind::not_found, path, "", "no such directory");
    fail_io(path, "stat", errno);
  }
  if (!S_ISDIR(st.st_mode)) throw Error(ErrorKind::not_found, path, "", "is not a directory");
}

void create_parent_directories(const std::string& destination) {
  const fs::path parent = entry_path(destination).parent_path();
  if (parent.empty()) return;
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (!ec) return;
  if (ec == std::errc::not_a_directory || ec == std::errc::file_exists) {
    throw Error(ErrorKind::io, parent.string(), "", "cannot create directory: a file is in the way");
  }
  fail_create(parent.string(), ec.value());
}

void build_directory(const std::string& destination_as_given,
                     const std::function<void(const std::string& staging)>& fill,
                     const std::function<void()>& before_replacing) {
  const fs::path dest = entry_path(destination_as_given);
  const std::string destination = dest.string();
  const fs::path parent = dest.parent_path().empty() ? fs::path(".") : dest.parent_path();
  const std::string staging = (parent / ("." + dest.filename().string() + ".tmp-" + unique_suffix())).string();
  clear_abandoned_temporaries(parent.string(), dest.filename().string());  // what a killed builder left
  std::error_code ec;
  fs::create_directory(staging, ec);
  if (ec) fail_create(destination, ec.value());
  try {
    fill(staging);
    fsync_directory(staging);
    ensure_no_mapped_file_shrank();
    if (fs::exists(fs::symlink_status(destination))) {
      if (before_replacing) before_replacing();
      exchange(staging, destination);  // one step: the old destination or the new one, never neither
      remove_tree(staging);            // now the old one; if killed here, a stale temporary cleared later
    } else {
      durable_rename(staging, destination);
    }
  } catch (const Error& e) {
    remove_tree(staging);
    throw e.named_in(staging, destination);
  } catch (...) {
    remove_tree(staging);
    throw;
  }
}

}  // namespace ckpt::fs_util
