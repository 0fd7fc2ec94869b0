#include "checkpoint/rotation.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <tuple>

#include "checkpoint/archive.hpp"
#include "checkpoint/lock.hpp"
#include "util/byte_buffer.hpp"
#include "util/sha256.hpp"
#include "util/error.hpp"
#include "util/fs.hpp"

namespace ckpt::checkpoint {
namespace fs = std::filesystem;

RotationPlan plan_rotation(const RunScan& scan, const RotateOptions& options, double now) {
  if (options.keep < 1) throw Error(ErrorKind::invalid_argument, "", "--keep", "must be at least 1");
  if (options.keep_every && *options.keep_every < 1)
    throw Error(ErrorKind::invalid_argument, "", "--keep-every", "must be at least 1");

  RotationPlan plan;
  for (const auto& e : scan.entries)
    plan.decisions.push_back({e.name, e.path, e.kind, e.step, false, "", "", e.size_bytes});

  const auto best = find_best(scan, options.best);
  const auto newest = newest_complete(scan);
  if (best) plan.best = scan.entries[best->entry].name;
  if (newest) plan.newest = scan.entries[*newest].name;

  // Entries outside the save_total_limit set first.
  for (std::size_t i = 0; i < scan.entries.size(); ++i) {
    const RunEntry& e = scan.entries[i];
    Decision& d = plan.decisions[i];
    const bool stale = now - e.mtime > options.stale_after_seconds;
    switch (e.kind) {
      case EntryKind::custom:
        d.reason = e.named ? "named checkpoint, never rotated" : "custom directory, never rotated";
        break;
      case EntryKind::archive:
        d.reason = "archive, bounded only by --keep-archives";
        break;
      case EntryKind::trash:
        d.remove = true;
        d.reason = "leftover of an interrupted deletion";
        break;
      case EntryKind::staging:
        d.remove = stale;
        d.reason = stale ? "staging directory, stale" : "staging directory, may be in progress";
        break;
      case EntryKind::checkpoint:
        if (!e.complete && e.unreadable) {
          d.reason = "holds a format ckpt cannot read, never deleted";
        } else if (!e.complete && e.has_trainer_state) {
          d.reason = "incomplete but holds trainer_state.json (its writer finished), never deleted";
        } else if (!e.complete) {
          d.remove = stale;
          d.reason = stale ? "incomplete, stale" : "incomplete, may be in progress";
        } else if (options.keep_every && *e.step % *options.keep_every == 0) {
          d.reason = "step divisible by --keep-every";
        }
        break;
    }
  }

  // Hugging Face's _sorted_checkpoints and _rotate_checkpoints over the complete checkpoints that count.
  std::vector<std::size_t> sorted;
  for (std::size_t i : ordered_checkpoints(scan, true, options.by_mtime)) {
    if (plan.decisions[i].reason.empty()) sorted.push_back(i);
  }
  if (best) {
    auto it = std::find(sorted.begin(), sorted.end(), best->entry);
    if (it != sorted.end()) {
      for (auto i = static_cast<std::size_t>(it - sorted.begin()); i + 2 < sorted.size(); ++i)
        std::swap(sorted[i], sorted[i + 1]);
    }
  }
  std::int64_t limit = options.keep;
  // Hugging Face's exception for a best that is not the newest; a best only archived has nothing live to protect.
  const bool best_live = best && scan.entries[best->entry].kind == EntryKind::checkpoint;
  if (best_live && limit == 1 && !sorted.empty() && sorted.back() != best->entry) limit = 2;
  const std::size_t cut =
      sorted.size() > static_cast<std::size_t>(limit) ? sorted.size() - static_cast<std::size_t>(limit) : 0;
  for (std::size_t k = 0; k < sorted.size(); ++k) {
    Decision& d = plan.decisions[sorted[k]];
    if (k >= cut) {
      d.reason = best && sorted[k] == best->entry ? "best checkpoint" : "within --keep " + std::to_string(options.keep);
    } else if (newest && sorted[k] == *newest) {
      d.reason = "newest complete checkpoint";
    } else if (best && sorted[k] == best->entry) {
      d.reason = "best checkpoint";
    } else {
      d.remove = true;
      d.reason = "beyond --keep " + std::to_string(options.keep);
    }
  }
  return plan;
}

namespace {

fs::path archive_directory(const std::string& run_dir, const RotateOptions& options) {
  fs::path dir(*options.archive_dir);
  return dir.is_relative() ? fs::path(run_dir) / dir : dir;
}

// Throws invalid_argument unless the archive directory is one whose archives rotate may delete: inside the run
// directory (the default `archive`, any relative DIR) every component below the run is a real directory, never a
// symlink, so the archives deleted are the run's own; on the way to a directory given elsewhere, a symlink is
// followed only if it is the user's own or root's (as /home -> /data/home), not one another user made, who could
// point it at anyone's archives. Components that do not exist yet are created by rotate itself.
void check_archive_directory(const std::string& run_dir, const RotateOptions& options) {
  const fs::path run = fs::absolute(run_dir).lexically_normal();
  const fs::path dir = fs::absolute(archive_directory(run_dir, options)).lexically_normal();
  const auto below_run = [&](const fs::path& path) {
    const fs::path relative = path.lexically_relative(run);
    return !relative.empty() && relative != "." && *relative.begin() != "..";
  };
  fs::path prefix;
  for (const auto& component : dir) {
    prefix /= component;
    struct stat st {};
    if (::lstat(prefix.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) continue;
    if (below_run(prefix)) {
      throw Error(
          ErrorKind::invalid_argument, prefix.string(), "--archive",
          "is a symlink; an archive directory inside the run must be a real directory (rotate deletes archives there)");
    }
    if (st.st_uid != ::geteuid() && st.st_uid != 0) {
      throw Error(ErrorKind::invalid_argument, prefix.string(), "--archive",
                  "is a symlink owned by another user (uid " + std::to_string(st.st_uid) +
                      "); not followed to an archive directory");
    }
  }
}

std::string archive_path_for(const std::string& run_dir, const RotateOptions& options, const std::string& name) {
  return (archive_directory(run_dir, options) / (name + kArchiveExtension)).string();
}

// A checkpoint's files as they are on disk. A committed checkpoint's files are never modified in place, so the
// same identity means the same bytes; a checkpoint replaced by another of its step (the trainer swaps them) has
// other inodes. Nullopt when the directory cannot be read (it vanished).
using FileIdentity =
    std::tuple<std::string, std::uint64_t, std::uint64_t, std::int64_t, std::int64_t>;  // name, dev, ino, size, mtime
std::optional<std::vector<FileIdentity>> identity_of(const std::string& dir) {
  std::vector<FileIdentity> files;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    struct stat st {};
    if (::lstat(it->path().c_str(), &st) != 0) return std::nullopt;
    if (S_ISDIR(st.st_mode)) continue;
    files.emplace_back(it->path().lexically_relative(dir).generic_string(), st.st_dev, st.st_ino, st.st_size,
                       st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec);
  }
  if (ec) return std::nullopt;
  std::sort(files.begin(), files.end());
  return files;
}

// Whether `archive` holds exactly the files of `dir`: the same names and sizes and every sha256 (the files are
// read and hashed; nothing is decompressed).
bool archive_holds(const std::string& archive, const std::string& dir, const std::vector<FileIdentity>& identity) {
  std::error_code ec;
  if (!fs::is_regular_file(archive, ec)) return false;
  try {
    const auto info = read_archive_info(archive);
    if (info.manifest.files.size() != identity.size()) return false;
    ByteBuffer buffer;
    buffer.resize(4u << 20);
    for (const auto& entry : identity) {
      const std::string& name = std::get<0>(entry);
      const auto f = std::find_if(info.manifest.files.begin(), info.manifest.files.end(),
                                  [&](const archive::File& a) { return a.name == name; });
      if (f == info.manifest.files.end() || f->size != static_cast<std::uint64_t>(std::get<3>(entry))) return false;
      ReadOnlyFile file((fs::path(dir) / name).string());
      Sha256 hash;
      for (std::uint64_t at = 0; at < file.size(); at += buffer.size()) {
        const auto part = buffer.span().first(std::min<std::uint64_t>(buffer.size(), file.size() - at));
        file.read_at(at, part);
        hash.update(part);
      }
      if (hash.finish() != f->sha256) return false;
    }
    return true;
  } catch (const Error&) {
    return false;
  }
}

// The archives phase one made sure of, by checkpoint name, with the identity of the files they hold; and the
// first failure to archive one.
struct ArchivedVictims {
  std::map<std::string, std::pair<std::string, std::vector<FileIdentity>>> archived;
  std::map<std::string, std::string> failed;  // name -> why
  std::optional<Error> first_error;
  std::size_t written = 0;
  std::uint64_t bytes_written = 0;
};

// Archives each complete checkpoint `plan` deletes (or checks the archive already there holds it), noting each
// checkpoint's identity before, and keeping the result only if it did not change meanwhile. A checkpoint that
// vanishes meanwhile (another process rotated it) is skipped; one that cannot be archived is noted and the others
// go on.
ArchivedVictims archive_victims(const std::string& run_dir, const RunScan& scan, const RotationPlan& plan,
                                const RotateOptions& options) {
  ArchivedVictims result;
  for (std::size_t i = 0; i < scan.entries.size(); ++i) {
    const Decision& d = plan.decisions[i];
    if (!d.remove || d.kind != EntryKind::checkpoint || !scan.entries[i].complete) continue;
    const auto before = identity_of(d.path);
    if (!before) continue;
    const std::string target = archive_path_for(run_dir, options, d.name);
    if (!archive_holds(target, d.path, *before)) {
      ArchiveOptions archive_options;
      archive_options.level = options.archive_level;
      archive_options.threads = options.archive_threads;
      archive_options.force = true;
      try {
        std::error_code ec;
        fs::create_directories(fs::path(target).parent_path(), ec);
        if (ec)
          throw Error(ErrorKind::io, fs::path(target).parent_path().string(), "",
                      "cannot create the archive directory: " + ec.message());
        if (options.archive_progress) {
          archive_options.progress = [&](std::uint64_t done, std::uint64_t total) {
            options.archive_progress(d.name, done, total);
          };
        }
        result.bytes_written += archive_checkpoint(d.path, target, archive_options).archive_bytes;
        ++result.written;
      } catch (const Error& e) {
        if (!identity_of(d.path)) continue;
        result.failed[d.name] = e.what();
        if (!result.first_error) result.first_error = e;
        continue;
      }
    }
    if (identity_of(d.path) == before) result.archived[d.name] = {target, *before};
  }
  return result;
}

// Marks archives in the archive directory beyond keep_archives (oldest steps first; the best's and unreadable
// ones stay) for removal, adding decisions for those the scan did not list.
void plan_archive_retention(const std::string& run_dir, const RotateOptions& options, const RunScan& scan,
                            RotationPlan& plan) {
  const fs::path dir = archive_directory(run_dir, options);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  std::optional<std::string> best_path;
  for (const auto& e : scan.entries) {
    if (plan.best && e.name == *plan.best) best_path = e.path;
  }
  std::vector<RunEntry> archives = scan_archive_dir(dir.string(), "");
  std::stable_sort(archives.begin(), archives.end(),
                   [](const RunEntry& a, const RunEntry& b) { return a.step.value_or(-1) < b.step.value_or(-1); });
  std::vector<const RunEntry*> counted;
  for (const auto& a : archives) {
    if (a.complete && a.step && !(best_path && fs::equivalent(a.path, *best_path, ec))) counted.push_back(&a);
  }
  const std::size_t keep = static_cast<std::size_t>(*options.keep_archives);
  const std::size_t cut = counted.size() > keep ? counted.size() - keep : 0;
  for (std::size_t k = 0; k < counted.size(); ++k) {
    const RunEntry& a = *counted[k];
    auto it = std::find_if(plan.decisions.begin(), plan.decisions.end(), [&](const Decision& d) {
      return d.kind == EntryKind::archive && fs::equivalent(d.path, a.path, ec);
    });
    if (it == plan.decisions.end()) {
      plan.decisions.push_back({a.path, a.path, EntryKind::archive, a.step, false, "", "", a.size_bytes});
      it = plan.decisions.end() - 1;
    }
    it->remove = k < cut;
    it->reason =
        k < cut ? "beyond --keep-archives " + std::to_string(keep) : "within --keep-archives " + std::to_string(keep);
  }
}

}  // namespace

RotationResult rotate(const std::string& run_dir, const RotateOptions& options, bool dry_run, bool wait_for_lock) {
  if (options.keep_archives && *options.keep_archives < 1)
    throw Error(ErrorKind::invalid_argument, "", "--keep-archives", "must be at least 1");
  if (options.keep_archives && !options.archive_dir)
    throw Error(ErrorKind::invalid_argument, "", "--keep-archives", "needs --archive");
  if (options.archive_dir) check_archive_directory(run_dir, options);
  const auto now = [] {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  };
  RotationResult result;
  ArchivedVictims victims;
  if (options.archive_dir && !dry_run) {
    RunScan scan;
    RotationPlan plan;
    {
      RunLock lock(run_dir, wait_for_lock);
      scan = scan_run(run_dir);
      plan = plan_rotation(scan, options, now());
    }
    victims = archive_victims(run_dir, scan, plan, options);
    result.archived = victims.written;
    result.archived_bytes = victims.bytes_written;
  }
  // A dry run only reads, so it neither takes the lock nor creates the lock file.
  std::optional<RunLock> lock;
  if (!dry_run) lock.emplace(run_dir, wait_for_lock);
  const RunScan scan = scan_run(run_dir);
  result.plan = plan_rotation(scan, options, now());
  if (options.archive_dir) {
    for (std::size_t i = 0; i < scan.entries.size(); ++i) {
      Decision& d = result.plan.decisions[i];
      if (!d.remove || d.kind != EntryKind::checkpoint || !scan.entries[i].complete) continue;
      d.archived_to = archive_path_for(run_dir, options, d.name);
      if (dry_run) continue;
      // Deleted only as the very files that were archived, with the archive still there.
      const auto it = victims.archived.find(d.name);
      std::error_code ec;
      const bool safe = it != victims.archived.end() && it->second.first == d.archived_to &&
                        fs::is_regular_file(d.archived_to, ec) && identity_of(d.path) == it->second.second;
      if (!safe) {
        d.remove = false;
        const auto failed = victims.failed.find(d.name);
        d.reason = failed != victims.failed.end() ? "kept: cannot archive it: " + failed->second
                                                  : "not archived yet, kept until the next rotate";
        d.archived_to.clear();
      }
    }
    if (options.keep_archives) plan_archive_retention(run_dir, options, scan, result.plan);
  }
  if (dry_run) {
    for (const Decision& d : result.plan.decisions) result.freed_bytes += d.remove ? d.size_bytes : 0;
    return result;
  }
  const auto delete_error = delete_planned(run_dir, options, result);
  // The rest of the rotation is done; what could not be archived or deleted is reported now.
  if (victims.first_error) throw *victims.first_error;
  if (delete_error) throw *delete_error;
  return result;
}

std::optional<Error> delete_planned(const std::string& run_dir, const RotateOptions& options, RotationResult& result) {
  std::optional<Error> first_error;
  const auto cannot_delete = [&](Decision& d, const std::string& what, int error_number) {
    d.remove = false;
    d.reason = "kept: cannot delete it: " + what + ": " + std::strerror(error_number);
    if (!first_error)
      first_error = Error(ErrorKind::io, d.path, "", "cannot delete: " + what + ": " + std::strerror(error_number));
  };
  // First every victim is renamed to a hidden trash name, so a crash from here on leaves trash, never a
  // partial checkpoint-N; one fsync makes all the renames durable before any byte is removed.
  std::vector<std::string> trash;
  std::set<std::string> archive_dirs;
  for (Decision& d : result.plan.decisions) {
    if (!d.remove) continue;
    if (d.kind == EntryKind::trash) {
      trash.push_back(d.path);
      ++result.trash_cleared;
      result.freed_bytes += d.size_bytes;
      continue;
    }
    if (d.kind == EntryKind::archive) {
      // One file: unlinking it is atomic.
      if (::unlink(d.path.c_str()) != 0 && errno != ENOENT) {
        cannot_delete(d, "unlink", errno);
        continue;
      }
      archive_dirs.insert(fs::path(d.path).parent_path().string());
      ++result.archives_removed;
      result.freed_bytes += d.size_bytes;
      continue;
    }
    const std::string to =
        (fs::path(run_dir) / (std::string(kTrashPrefix) + d.name + "-" + fs_util::unique_suffix())).string();
    if (::rename(d.path.c_str(), to.c_str()) != 0) {
      if (errno == ENOENT) continue;  // already gone
      cannot_delete(d, "moving it to the trash", errno);
      continue;
    }
    trash.push_back(to);
    ++result.removed;
    result.freed_bytes += d.size_bytes;
  }
  if (options.archive_dir) {
    // The temporaries of archives whose writer was killed.
    const std::string dir = archive_directory(run_dir, options).string();
    result.temporaries_cleared = fs_util::clear_abandoned_temporaries(dir);
    if (result.temporaries_cleared > 0) archive_dirs.insert(dir);
  }
  for (const auto& dir : archive_dirs) fs_util::fsync_directory(dir);
  if (trash.empty()) return first_error;
  fs_util::fsync_directory(run_dir);
  for (const auto& path : trash) {
    try {
      fs_util::remove_tree(path);  // no longer a checkpoint: what stays is cleared by the next rotate
    } catch (const Error& e) {
      if (!first_error) first_error = e;
    }
  }
  return first_error;
}

RotationResult clear_earlier_run(const std::string& run_dir) {
  RunLock lock(run_dir, true);
  RotationResult result;
  for (const RunEntry& e : scan_run(run_dir).entries) {
    Decision d{e.name, e.path, e.kind, e.step, false, "", "", e.size_bytes};
    if (e.kind == EntryKind::checkpoint || e.kind == EntryKind::archive) {
      // An archive whose manifest does not read may be another tool's file of that extension.
      if (e.kind == EntryKind::checkpoint ? e.unreadable : !e.complete) {
        throw Error(ErrorKind::unsupported, e.path, "--overwrite-output-dir",
                    "not deleted, ckpt cannot assess it (" +
                        (e.problems.empty() ? std::string("unreadable") : e.problems.front()) +
                        "): move it out of the run directory or delete it yourself");
      }
      d.remove = true;
      d.reason = "an earlier run's, --overwrite-output-dir";
    } else if (e.kind == EntryKind::trash) {
      d.remove = true;
      d.reason = "leftover of an interrupted deletion";
    }
    result.plan.decisions.push_back(std::move(d));
  }
  RotateOptions options;
  // Its abandoned temporaries go too, when the archive directory is the run's own (not a symlink).
  std::error_code ec;
  if (fs::is_directory(fs::symlink_status(fs::path(run_dir) / kArchiveDirName, ec)))
    options.archive_dir = kArchiveDirName;
  if (const auto error = delete_planned(run_dir, options, result)) throw *error;
  return result;
}

}  // namespace ckpt::checkpoint
