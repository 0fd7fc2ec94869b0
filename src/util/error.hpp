// The one error type core code throws. It carries what kind of failure happened, which file, and where in it
// (a zip member, a tensor name, a byte offset), so the CLI can print `ckpt: error: FILE: WHERE: WHAT` and map
// the kind to an exit code without parsing messages.
#pragma once

#include <atomic>
#include <stdexcept>
#include <string>

namespace ckpt {

enum class ErrorKind {
  not_found,         // a path or a member that should exist does not
  corrupt,           // the bytes contradict their own format
  unsupported,       // well-formed, but a variant we do not handle (legacy format, compressed zip member, ...)
  invalid_argument,  // the caller asked for something impossible
  io,                // the operating system refused (permissions, full disk, EIO)
  interrupted,       // a signal asked us to stop
  locked,            // another process holds a lock we were told not to wait for
};

const char* to_string(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string path, std::string where, std::string what);

  ErrorKind kind() const { return kind_; }
  const std::string& path() const { return path_; }
  const std::string& where() const { return where_; }
  const std::string& detail() const { return detail_; }

  // The same error seen from an enclosing context: fills in the path or prefixes the location when they are
  // still unknown at the throw site (a parser of a byte buffer does not know its file's name).
  Error with_context(const std::string& path, const std::string& where_prefix) const;

  // The same error about a file of a directory written under a hidden staging name (`staging`) and renamed to
  // `destination` when complete: named where the user will look, where the file would have appeared. An error
  // about any other path is returned as it is.
  Error named_in(const std::string& staging, const std::string& destination) const;

 private:
  static std::string compose(const std::string& path, const std::string& where, const std::string& what);

  ErrorKind kind_;
  std::string path_;
  std::string where_;
  std::string detail_;
};

// Throws Error(interrupted) once `flag` (set by a signal handler; may be null) is set: long writers call it between
// chunks so that they stop through their ordinary failure path, which removes what they had begun to write.
void stop_if_interrupted(const std::atomic<bool>* flag);

// Throws Error(kind, path, where, what) : used by parsers that have no file name; callers add it.
[[noreturn]] void fail(ErrorKind kind, std::string where, std::string what);
[[noreturn]] void fail_corrupt(std::string where, std::string what);

// An errno-carrying I/O failure on `path`.
[[noreturn]] void fail_io(const std::string& path, const std::string& action, int error_number);

// `path` could not be created (open O_CREAT, mkdir, symlink failed with `error_number`). It names what the user
// asked for, never the temporary beside it that was being created: the message says which directory is missing
// (not_found) or must be writable.
[[noreturn]] void fail_create(const std::string& path, int error_number);

// `path` is shorter than when it was opened: another process truncated or rewrote it in place while we read
// it. An I/O failure (exit 1), not corruption: the file may well be whole once its writer is done.
[[noreturn]] void fail_shrank(const std::string& path, const std::string& where);

}  // namespace ckpt
