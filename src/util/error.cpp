#include "util/error.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace ckpt {

const char* to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::not_found:
      return "not found";
    case ErrorKind::corrupt:
      return "corrupt";
    case ErrorKind::unsupported:
      return "unsupported";
    case ErrorKind::invalid_argument:
      return "invalid argument";
    case ErrorKind::io:
      return "I/O error";
    case ErrorKind::interrupted:
      return "interrupted";
    case ErrorKind::locked:
      return "locked";
  }
  return "error";
}

Error::Error(ErrorKind kind, std::string path, std::string where, std::string what)
    : std::runtime_error(compose(path, where, what)),
      kind_(kind),
      path_(std::move(path)),
      where_(std::move(where)),
      detail_(std::move(what)) {}

std::string Error::compose(const std::string& path, const std::string& where, const std::string& what) {
  std::string message;
  if (!path.empty()) message += path + ": ";
  if (!where.empty()) message += where + ": ";
  message += what;
  return message;
}

Error Error::with_context(const std::string& path, const std::string& where_prefix) const {
  std::string where = where_;
  if (!where_prefix.empty()) where = where.empty() ? where_prefix : where_prefix + ": " + where;
  return Error(kind_, path_.empty() ? path : path_, where, detail_);
}

Error Error::named_in(const std::string& staging, const std::string& destination) const {
  if (path_ != staging && path_.rfind(staging + "/", 0) != 0) return *this;
  return Error(kind_, destination + path_.substr(staging.size()), where_, detail_);
}

void stop_if_interrupted(const std::atomic<bool>* flag) {
  if (flag && flag->load())
    throw Error(ErrorKind::interrupted, "", "", "interrupted; the destination is left as it was");
}

void fail(ErrorKind kind, std::string where, std::string what) {
  throw Error(kind, "", std::move(where), std::move(what));
}

void fail_corrupt(std::string where, std::string what) { fail(ErrorKind::corrupt, std::move(where), std::move(what)); }

void fail_io(const std::string& path, const std::string& action, int error_number) {
  ErrorKind kind = (error_number == ENOENT || error_number == ENOTDIR) ? ErrorKind::not_found : ErrorKind::io;
  throw Error(kind, path, "", action + ": " + std::strerror(error_number));
}

void fail_create(const std::string& path, int error_number) {
  const std::string parent = std::filesystem::path(path).parent_path().string();
  const std::string directory = parent.empty() ? "." : parent;
  if (error_number == ENOENT || error_number == ENOTDIR) {
    throw Error(ErrorKind::not_found, path, "", "cannot create: its directory " + directory + " does not exist");
  }
  std::string what = std::string("cannot create: ") + std::strerror(error_number);
  if (error_number == EACCES || error_number == EPERM || error_number == EROFS)
    what += " (" + directory + " must be writable)";
  throw Error(ErrorKind::io, path, "", what);
}

void fail_shrank(const std::string& path, const std::string& where) {
  throw Error(ErrorKind::io, path, where, "the file shrank while being read (rewritten in place by another process?)");
}

}  // namespace ckpt
