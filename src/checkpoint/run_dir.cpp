#include "checkpoint/run_dir.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>
#include <string_view>

#include "checkpoint/archive.hpp"
#include "util/error.hpp"
#include "util/fs.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::checkpoint {
namespace fs = std::filesystem;

namespace {

Error cannot_list(const std::string& dir, int error_number) {
  return Error(error_number == ENOENT ? ErrorKind::not_found : ErrorKind::io, dir, "",
               std::string("cannot list directory: ") + std::strerror(error_number));
}

fs::directory_iterator list_directory(const std::string& dir) {
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) throw cannot_list(dir, ec.value());
  return it;
}

// A visible `*.ckpt` name: an archive, when it is a regular file.
bool is_archive_name(const std::string& name) {
  return !name.empty() && name.front() != '.' && fs::path(name).extension() == kArchiveExtension;
}

// The one rule of what makes a run directory, from its entries (`dir` open at `path`): it holds what scan_run lists
// as a checkpoint or an archive, a checkpoint-N directory or a regular *.ckpt file there or in its archive
// directory; symlinks are not followed.
bool holds_checkpoints(fs_util::OpenDirectory& dir, const std::vector<fs_util::DirectoryEntry>& entries,
                       const std::string& path) {
  bool archive_dir = false;
  for (const auto& e : entries) {
    if ((e.type == DT_DIR && checkpoint_step(e.name)) || (e.type == DT_REG && is_archive_name(e.name))) return true;
    archive_dir |= e.type == DT_DIR && e.name == kArchiveDirName;
  }
  if (!archive_dir) return false;
  auto archives = fs_util::OpenDirectory::open(dir.fd(), kArchiveDirName, false);
  if (!archives) return false;
  const auto archived = archives->entries((fs::path(path) / kArchiveDirName).string());
  return std::any_of(archived.begin(), archived.end(),
                     [](const auto& e) { return e.type == DT_REG && is_archive_name(e.name); });
}

}  // namespace

std::optional<std::int64_t> checkpoint_step(const std::string& name) {
  static constexpr std::string_view kPrefix = "checkpoint-";
  if (name.size() <= kPrefix.size() || name.compare(0, kPrefix.size(), kPrefix) != 0) return std::nullopt;
  std::int64_t step = 0;
  for (std::size_t i = kPrefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    if (__builtin_mul_overflow(step, 10, &step) || __builtin_add_overflow(step, name[i] - '0', &step))
      return std::nullopt;
  }
  return step;
}

std::vector<CheckpointDir> discover_checkpoints(const std::string& run_dir) {
  std::vector<CheckpointDir> found;
  std::error_code ec;
  fs::directory_iterator it = list_directory(run_dir);
  for (const auto& entry : it) {
    const std::string name = entry.path().filename().string();
    auto step = checkpoint_step(name);
    if (!step || entry.is_symlink(ec) || !entry.is_directory(ec)) continue;
    found.push_back({name, entry.path().string(), *step});
  }
  std::sort(found.begin(), found.end(), [](const CheckpointDir& a, const CheckpointDir& b) {
    return a.step != b.step ? a.step < b.step : a.name < b.name;
  });
  return found;
}

const char* to_string(EntryKind kind) {
  switch (kind) {
    case EntryKind::checkpoint:
      return "checkpoint";
    case EntryKind::staging:
      return "staging";
    case EntryKind::trash:
      return "trash";
    case EntryKind::custom:
      return "custom";
    case EntryKind::archive:
      return "archive";
  }
  return "custom";
}

namespace {

double mtime_of(const fs::path& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return 0;
  return static_cast<double>(st.st_mtim.tv_sec) + static_cast<double>(st.st_mtim.tv_nsec) * 1e-9;
}

struct TreeStats {
  double newest_mtime = 0;  // of the directory and its direct children
  std::uint64_t size_bytes = 0;
  std::size_t num_files = 0;
};

// One pass over a directory tree, never following symlinks. A directory being written shows it in its files'
// times, not always its own (a large file grows in place), hence the children's mtimes.
TreeStats stat_tree(const fs::path& dir) {
  TreeStats stats;
  stats.newest_mtime = mtime_of(dir);
  std::vector<std::pair<fs::path, bool>> pending{{dir, true}};
  while (!pending.empty()) {
    auto [path, top] = pending.back();
    pending.pop_back();
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(path, ec)) {
      struct stat st {};
      if (::lstat(entry.path().c_str(), &st) != 0) continue;
      if (top) {
        stats.newest_mtime = std::max(stats.newest_mtime, static_cast<double>(st.st_mtim.tv_sec) +
                                                              static_cast<double>(st.st_mtim.tv_nsec) * 1e-9);
      }
      if (S_ISREG(st.st_mode)) {
        stats.size_bytes += static_cast<std::uint64_t>(st.st_size);
        ++stats.num_files;
      } else if (S_ISDIR(st.st_mode))
        pending.emplace_back(entry.path(), false);
    }
  }
  return stats;
}

// An archive entry from its manifest alone; a manifest that does not read makes it incomplete, with the reason.
RunEntry archive_entry(const fs::path& path, const std::string& name) {
  RunEntry e;
  e.kind = EntryKind::archive;
  e.name = name;
  e.path = path.string();
  e.mtime = e.dir_mtime = mtime_of(path);
  try {
    const auto info = read_archive_info(e.path);
    e.size_bytes = info.summary.archive_bytes;
    e.num_files = info.summary.files;
    e.original_bytes = info.summary.original_bytes;
    e.archived_name = info.manifest.checkpoint;
    e.step = info.manifest.step;
    e.state = trainer_state_from_manifest(info.manifest.trainer_state);
    e.complete = true;
  } catch (const Error& err) {
    e.problems.push_back(err.what());
    e.unreadable = err.kind() == ErrorKind::unsupported;
    e.step = checkpoint_step(path.stem().string());
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) e.size_bytes = static_cast<std::uint64_t>(st.st_size);
  }
  return e;
}

}  // namespace

std::vector<RunEntry> scan_archive_dir(const std::string& dir, const std::string& prefix) {
  std::vector<RunEntry> entries;
  std::error_code ec;
  for (const auto& dirent : fs::directory_iterator(dir, ec)) {
    const std::string name = dirent.path().filename().string();
    if (!is_archive_name(name) || dirent.is_symlink(ec) || !dirent.is_regular_file(ec)) continue;
    entries.push_back(archive_entry(dirent.path(), prefix + name));
  }
  std::sort(entries.begin(), entries.end(), [](const RunEntry& a, const RunEntry& b) { return a.name < b.name; });
  return entries;
}

RunScan scan_run(const std::string& run_dir) {
  RunScan scan;
  scan.path = run_dir;
  std::error_code ec;
  fs::directory_iterator it = list_directory(run_dir);
  scan.entries = scan_archive_dir(run_dir, "");
  for (const auto& dirent : it) {
    if (dirent.is_symlink(ec) || !dirent.is_directory(ec)) continue;
    if (dirent.path().filename() == kArchiveDirName) {
      for (auto& e : scan_archive_dir(dirent.path().string(), std::string(kArchiveDirName) + "/"))
        scan.entries.push_back(std::move(e));
      continue;
    }
    RunEntry e;
    e.name = dirent.path().filename().string();
    e.path = dirent.path().string();
    e.step = checkpoint_step(e.name);
    if (e.step)
      e.kind = EntryKind::checkpoint;
    else if (e.name.rfind("tmp-checkpoint-", 0) == 0 || e.name.rfind(kStagingPrefix, 0) == 0)
      e.kind = EntryKind::staging;
    else if (e.name.rfind(kTrashPrefix, 0) == 0)
      e.kind = EntryKind::trash;
    else if (e.name.front() == '.')
      continue;  // other hidden directories are not ours to show
    const TreeStats stats = stat_tree(dirent.path());
    e.mtime = stats.newest_mtime;
    e.dir_mtime = mtime_of(dirent.path());
    e.size_bytes = stats.size_bytes;
    e.num_files = stats.num_files;
    e.named = e.kind == EntryKind::custom && holds_named_checkpoint(e.path);
    if (e.kind == EntryKind::checkpoint || e.named) {
      Completeness c = assess_completeness(e.path);
      e.complete = c.complete;
      e.unreadable = c.unreadable;
      e.has_trainer_state = c.has_trainer_state;
      e.problems = std::move(c.problems);
      e.layout = std::move(c.layout);
      e.state = std::move(c.state);
      if (e.named && e.state) e.step = e.state->global_step;
    }
    scan.entries.push_back(std::move(e));
  }
  // Checkpoints by step (an archive after the live checkpoint of its step), then the others by name.
  const auto by_step = [](const RunEntry& e) { return e.step.has_value() && !e.named; };
  std::sort(scan.entries.begin(), scan.entries.end(), [&](const RunEntry& a, const RunEntry& b) {
    if (by_step(a) != by_step(b)) return by_step(a);
    if (by_step(a) && *a.step != *b.step) return *a.step < *b.step;
    if ((a.kind == EntryKind::archive) != (b.kind == EntryKind::archive)) return b.kind == EntryKind::archive;
    return a.path < b.path;
  });
  return scan;
}

bool check_run_directory(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) throw Error(ErrorKind::not_found, path, "", "no such directory");
    fail_io(path, "stat", errno);
  }
  if (!S_ISDIR(st.st_mode)) throw Error(ErrorKind::not_found, path, "", "is a file, not a run directory");
  auto listing = fs_util::OpenDirectory::open(AT_FDCWD, path, true);
  if (!listing) throw cannot_list(path, errno);
  const auto entries = listing->entries(path);
  if (holds_checkpoints(*listing, entries, path)) return false;
  const fs::path dir = fs::path(path).lexically_normal();
  std::error_code ec;
  std::vector<std::string> others;  // what the directory holds instead of checkpoints
  std::vector<std::string> runs_below;
  for (const auto& entry : entries) {
    const std::string& name = entry.name;
    if (name.front() == '.' || name.rfind("tmp-checkpoint-", 0) == 0 || name == "runs" || name == kArchiveDirName)
      continue;
    others.push_back(name);
    if (entry.type != DT_DIR) continue;
    const std::string below = (fs::path(path) / name).string();
    auto inner = fs_util::OpenDirectory::open(listing->fd(), name, false);
    if (inner && holds_checkpoints(*inner, inner->entries(below), below)) runs_below.push_back(below);
  }
  if (others.empty()) return true;
  // No checkpoints in it: is it one itself? (A run directory may hold the final weights and trainer_state.json too,
  // which is why its checkpoints were looked for first.)
  const bool has_state = fs::exists(fs::symlink_status(dir / "trainer_state.json", ec));
  bool has_weights = true;
  try {
    has_weights = find_weights(path).has_value();
  } catch (const Error&) {}  // an index that does not read is still a checkpoint's
  const fs::path absolute = fs::absolute(dir, ec);
  if (has_state || has_weights || checkpoint_step(absolute.filename().string())) {
    throw Error(
        ErrorKind::not_found, path, "",
        std::string(has_state || !has_weights ? "is a checkpoint" : "is a model directory (weights, no checkpoints)") +
            "; its run directory is " + absolute.parent_path().string());
  }
  std::sort(runs_below.begin(), runs_below.end());
  std::string what = "holds no checkpoints (checkpoint-N directories or archives)";
  if (!runs_below.empty()) {
    what += "; run directories below it: " + runs_below.front();
    for (std::size_t i = 1; i < runs_below.size() && i < 3; ++i) what += ", " + runs_below[i];
    if (runs_below.size() > 3) what += ", and " + std::to_string(runs_below.size() - 3) + " more";
  }
  throw Error(ErrorKind::not_found, path, "", what);
}

namespace {

// find_run_directories' walk, one directory at a time, depth first.
class RunSearch {
 public:
  RunSearch(const std::string& root, const RunSearchLimits& limits) : root_(root), limits_(limits) {}

  // `dir`, open at `path` `depth` levels below the root: a run directory or not, then what is below it.
  void visit(fs_util::OpenDirectory& dir, const std::string& path, int depth) {
    if (++directories_ > limits_.max_directories) {
      throw Error(ErrorKind::unsupported, root_, "--recursive",
                  "holds more than " + std::to_string(limits_.max_directories) +
                      " directories; give a directory nearer the runs");
    }
    std::vector<fs_util::DirectoryEntry> entries;
    bool run = false;
    try {
      entries = dir.entries(path);
      run = holds_checkpoints(dir, entries, path);
    } catch (const Error& e) {
      if (depth == 0) throw;
      found_.push_back({path, e});
      return;
    }
    if (run) found_.push_back({path, std::nullopt});
    for (const auto& entry : entries) {
      if (entry.type != DT_DIR || entry.name.front() == '.' || checkpoint_step(entry.name) ||
          (run && entry.name == kArchiveDirName))
        continue;
      const std::string below = (fs::path(path) / entry.name).string();
      if (depth == limits_.max_depth) {
        throw Error(ErrorKind::unsupported, root_, "--recursive",
                    "directories nest more than " + std::to_string(limits_.max_depth) + " levels deep below it (" +
                        below + "); give a directory nearer the runs");
      }
      auto inner = fs_util::OpenDirectory::open(dir.fd(), entry.name, false);
      if (inner) {
        visit(*inner, below, depth + 1);
      } else if (errno != ENOENT && errno != ENOTDIR && errno != ELOOP) {  // not gone or replaced meanwhile
        found_.push_back({below, cannot_list(below, errno)});
      }
    }
  }

  std::vector<RunTarget> take() { return std::move(found_); }

 private:
  const std::string& root_;
  const RunSearchLimits& limits_;
  std::size_t directories_ = 0;
  std::vector<RunTarget> found_;
};

}  // namespace

std::vector<RunTarget> find_run_directories(const std::string& root, const RunSearchLimits& limits) {
  fs_util::require_directory(root);
  auto dir = fs_util::OpenDirectory::open(AT_FDCWD, root, true);
  if (!dir) throw cannot_list(root, errno);
  RunSearch search(root, limits);
  search.visit(*dir, root, 0);
  std::vector<RunTarget> found = search.take();
  std::sort(found.begin(), found.end(), [](const RunTarget& a, const RunTarget& b) { return a.path < b.path; });
  return found;
}

std::vector<RunTarget> select_runs(const std::vector<std::string>& run_dirs, const std::vector<std::string>& roots) {
  std::vector<RunTarget> selected;
  for (const auto& run_dir : run_dirs) selected.push_back({run_dir, std::nullopt});
  for (const auto& root : roots) {
    try {
      auto found = find_run_directories(root);
      if (found.empty()) {
        throw Error(ErrorKind::not_found, root, "--recursive",
                    "holds no run directories (directories holding checkpoint-N directories or archives)");
      }
      for (auto& target : found) selected.push_back(std::move(target));
    } catch (const Error& e) {
      selected.push_back({root, e});
    }
  }
  std::set<std::string> seen;
  std::vector<RunTarget> unique;
  for (auto& target : selected) {
    const std::unique_ptr<char, void (*)(void*)> real(::realpath(target.path.c_str(), nullptr), std::free);
    if (real && !seen.insert(real.get()).second) continue;
    unique.push_back(std::move(target));
  }
  return unique;
}

std::vector<std::size_t> ordered_checkpoints(const RunScan& scan, bool complete_only, bool by_mtime) {
  std::vector<std::size_t> order;
  for (std::size_t i = 0; i < scan.entries.size(); ++i) {
    const RunEntry& e = scan.entries[i];
    if (e.kind == EntryKind::checkpoint && (e.complete || !complete_only)) order.push_back(i);
  }
  if (by_mtime && order.size() > 1) {
    auto [lo, hi] = std::minmax_element(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return scan.entries[a].dir_mtime < scan.entries[b].dir_mtime;
    });
    if (scan.entries[*hi].dir_mtime - scan.entries[*lo].dir_mtime >= 1.0) {
      // Hugging Face sorts (mtime, path) tuples: equal mtimes fall back to the path as a string.
      std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        const RunEntry& x = scan.entries[a];
        const RunEntry& y = scan.entries[b];
        return x.dir_mtime != y.dir_mtime ? x.dir_mtime < y.dir_mtime : x.path < y.path;
      });
    }
  }
  return order;
}

std::vector<std::size_t> complete_by_step(const RunScan& scan, bool with_archives) {
  std::vector<std::size_t> order = ordered_checkpoints(scan, true, false);
  if (with_archives) {
    std::set<std::int64_t> live;
    for (std::size_t i : order) live.insert(*scan.entries[i].step);
    for (std::size_t i = 0; i < scan.entries.size(); ++i) {
      const RunEntry& e = scan.entries[i];
      if (e.kind == EntryKind::archive && e.complete && e.step && live.insert(*e.step).second) order.push_back(i);
    }
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return *scan.entries[a].step < *scan.entries[b].step; });
  return order;
}

std::optional<std::size_t> newest_complete(const RunScan& scan) {
  const auto order = complete_by_step(scan, false);
  if (order.empty()) return std::nullopt;
  return order.back();
}

std::string shell_word(const std::string& word) {
  const bool plain = !word.empty() && std::all_of(word.begin(), word.end(), [](unsigned char c) {
    return std::isalnum(c) || std::string_view("@%+=:,./_-").find(static_cast<char>(c)) != std::string_view::npos;
  });
  if (plain) return word;
  std::string quoted = "'";
  for (char c : word) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

std::vector<RunEntry> earlier_checkpoints(const std::string& run_dir) {
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) return {};
  std::vector<RunEntry> earlier;
  for (auto& e : scan_run(run_dir).entries) {
    if (e.kind == EntryKind::checkpoint || e.kind == EntryKind::archive) earlier.push_back(std::move(e));
  }
  return earlier;
}

Error earlier_run_error(const std::string& run_dir, const std::vector<RunEntry>& earlier) {
  // The highest step there, and the newest that can be resumed (a live checkpoint before an archive of its step).
  const RunEntry* highest = &earlier.front();
  const RunEntry* newest = nullptr;
  for (const auto& e : earlier) {
    if (e.step && (!highest->step || *e.step > *highest->step)) highest = &e;
    if (e.complete && e.step && (!newest || *e.step > *newest->step)) newest = &e;
  }
  const std::string start_over = "start over with --overwrite-output-dir, which deletes them";
  if (!newest) {
    return Error(ErrorKind::invalid_argument, run_dir, "--output-dir",
                 "holds checkpoints of an earlier run, the newest " + highest->name +
                     ", and none that can be resumed: " + start_over + ", or choose another --output-dir");
  }
  // `ckpt resume` takes the newest complete checkpoint directory; an archive is restored with --from, by its
  // checkpoint's name when that finds it (resume_source: no directory of the name in the way), else by its path.
  std::string resume = resume_command(run_dir);
  if (newest->kind == EntryKind::archive) {
    const std::string name = fs::path(newest->path).stem().string();
    resume = resume_command(run_dir, resume_source(run_dir, name) == newest->path ? name : newest->path);
  }
  const std::string which = *newest->step < highest->step.value_or(0)
                                ? "up to " + highest->name + " (the newest complete: " + newest->name + ")"
                                : "the newest " + newest->name;
  return Error(
      ErrorKind::invalid_argument, run_dir, "--output-dir",
      "holds checkpoints of an earlier run, " + which + ": continue it with `" + resume + "`, or " + start_over);
}

std::string resume_source(const std::string& run_dir, const std::string& from) {
  if (from.empty() || from == "." || from == ".." || from.find('/') != std::string::npos) return from;
  std::vector<fs::path> candidates{fs::path(run_dir) / from};
  if (checkpoint_step(from)) {
    const std::string archive = from + kArchiveExtension;
    candidates.push_back(fs::path(run_dir) / kArchiveDirName / archive);
    candidates.push_back(fs::path(run_dir) / archive);
  }
  std::error_code ec;
  for (const auto& candidate : candidates) {
    if (fs::exists(candidate, ec)) return candidate.string();
  }
  return from;
}

std::string resume_command(const std::string& run_dir, const std::optional<std::string>& from) {
  std::string command = "ckpt resume " + shell_word(run_dir);
  if (from) command += " --from " + shell_word(*from);
  return command;
}

}  // namespace ckpt::checkpoint
