// File-system steps that must not be half-done: durable renames, symlinks replaced in one step, directory
// removal that never follows links.
#pragma once

#include <dirent.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ckpt::fs_util {

// For a file of a directory that ckpt reads whole (convert DIR, archiving): throws Error (unsupported, "not a
// regular file") unless `path` itself is a regular file. A symlink is not followed: its target may lie anywhere
// (outside the checkpoint, or a device); a FIFO would block. False for a directory, which the caller handles.
bool require_regular_file(const std::string& path);

// fsync on a directory, so that renames and creations inside it survive a crash.
void fsync_directory(const std::string& dir);

// Swaps two directory entries in one step (renameat2 RENAME_EXCHANGE), then fsyncs their directory. Where the
// file system cannot, renames `to` aside, `from` into place and the old one to `from`, restoring `to` if the
// second rename fails. Throws Error (io) naming `to`.
void exchange(const std::string& from, const std::string& to);

// fsync of each file, all at once from as many threads (so that their device flushes overlap). Throws Error
// (io) naming the first file that failed.
void fsync_files(const std::vector<std::string>& paths);

// rename(2) then fsync of the destination's directory. Throws Error (io, not_found) naming `to`: `from` is a
// temporary name.
void durable_rename(const std::string& from, const std::string& to);

// Points `link` at `target` (stored as given, so relative targets stay relative), replacing an existing link
// in one step: a temporary link beside it renamed over it. Only a symlink is replaced: anything else at `link`
// (a file, a directory, a FIFO) is someone's data, an Error of kind invalid_argument.
void replace_symlink(const std::string& target, const std::string& link);

// Removes a directory tree without following symlinks; a missing path is not an error.
void remove_tree(const std::string& path);

// Copies `from` to `to` in one step: written to a temporary name beside `to` (in the kernel where it can),
// fsynced and renamed over it.
void copy_file(const std::string& from, const std::string& to);

// The same, but a hard link when both are on one file system (for files nobody will modify, such as an
// export of immutable checkpoint files). Returns true when it hard-linked. A copy is made only where a link cannot
// be (EXDEV: another file system; EPERM: one without hard links, or protected_hardlinks; EMLINK: the link count
// at its limit); any other failure is an Error naming `from` (it vanished) or `to` (its directory refused).
bool link_or_copy(const std::string& from, const std::string& to);

// The regular files below `dir` (subdirectories walked, symlinks never followed), as paths relative to it, sorted.
// A symlink, FIFO, socket or device anywhere below is an Error as require_regular_file makes it: what ckpt reads
// whole or links must be the directory's own files.
std::vector<std::string> regular_files_below(const std::string& dir);

// Places every regular file below `from` (regular_files_below) at the same relative path in the existing directory
// `to` with link_or_copy, creating subdirectories; the subdirectories are fsynced once filled, `to` is the caller's
// to fsync.
struct LinkedTree {
  std::size_t files = 0;
  std::size_t hard_linked = 0;  // the others were copied
};
LinkedTree link_tree(const std::string& from, const std::string& to);

// Throws Error (not_found) unless `path` is a directory (or a symlink to one): "no such directory", the one
// wording of every subcommand for a directory argument that is missing.
void require_directory(const std::string& path);

// Creates the missing directories above `destination`, as mkdir -p of its parent, so that an output goes where the
// user named it (convert -o, best --export). Throws Error naming the directory that cannot be created.
void create_parent_directories(const std::string& destination);

// `path` as the entry it names: `out/` and `a/./out` are `out` in its parent, so temporaries go beside it.
std::filesystem::path entry_path(const std::string& path);

// Builds a directory in a hidden staging directory beside `destination` (`.NAME.tmp-*`; first clearing those a
// killed builder left), filled by `fill`
// (which makes its files durable), then fsyncs it and renames it into place, so the destination appears complete
// or not at all; an existing destination is exchanged with it in one step (`exchange`) and then removed, after
// `before_replacing` (when given) had its say: it throws to keep what is there. On failure the staging directory
// is removed, and an Error about it or a file in it names the destination (or the file in it) instead
// (Error::named_in).
void build_directory(const std::string& destination, const std::function<void(const std::string& staging)>& fill,
                     const std::function<void()>& before_replacing = {});

// Whether `path` is a temporary entry beside a destination (`.NAME.tmp-<pid>-...`, as AtomicFile and
// build_directory name them) left by a killed process: its writer's pid no longer runs here and it has not been
// modified for a minute (so a writer on another host sharing the directory, whose pid means nothing here, is
// left alone while it writes).
bool is_abandoned_temporary(const std::string& path);

// Removes the abandoned temporaries (files or directories) in `dir` whose names begin with `.` + `name` (every
// temporary when `name` is empty); returns how many. A writer of `dir/name` calls it first, so what a killed
// writer left is cleared by the next one.
std::size_t clear_abandoned_temporaries(const std::string& dir, const std::string& name = "");
// The same for the temporaries of `destination`, beside it.
void clear_abandoned_temporaries_of(const std::string& destination);

// A name unique to this process and call, for temporary entries beside a destination.
std::string unique_suffix();

struct DirectoryEntry {
  std::string name;
  unsigned char type = DT_UNKNOWN;  // readdir's DT_DIR, DT_REG, DT_LNK...; from lstat when readdir does not say
};

// A directory open for reading by descriptor, for walks that reach what is below it through it (openat) rather than
// by a path, which a symlink put in its place meanwhile could redirect. Closed on destruction.
class OpenDirectory {
 public:
  // `name` in the directory open at `parent` (AT_FDCWD: relative to the working directory), only if it is a
  // directory, and never through a symlink unless `follow`. Nullopt with errno set when it cannot be opened (ENOTDIR
  // for a symlink not followed, as for anything else that is no directory; ELOOP on some systems).
  static std::optional<OpenDirectory> open(int parent, const std::string& name, bool follow);
  int fd() const { return ::dirfd(dir_.get()); }
  // Every entry but . and .., in the file system's order. Throws Error (io) naming `path` when reading fails.
  std::vector<DirectoryEntry> entries(const std::string& path);

 private:
  explicit OpenDirectory(DIR* dir) : dir_(dir, ::closedir) {}
  std::unique_ptr<DIR, int (*)(DIR*)> dir_;
};

}  // namespace ckpt::fs_util
