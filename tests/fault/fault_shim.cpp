// An LD_PRELOAD library that makes one file operation of ckpt fail, for the fault-injection tests
// (tests/fault/test_faults.py). Configured by the environment:
//   CKPT_FAULT        OP:N:ERRNO  the Nth call (1-based) of OP on a matching path fails with ERRNO (a number);
//                     OP:N:short  the Nth write of OP returns after half its bytes (a legal short write)
//                     OP:N:kill   the process SIGKILLs itself at the Nth call of OP (a worker dying mid-save)
//                     mmap:N:truncate  the file of the Nth file map is cut to its first 4 KiB (half, if smaller
//                                 than 8 KiB) once mapped (as if another process rewrote it in place)
//                     mmap:N:run  once the Nth file map is made, runs the shell command CKPT_FAULT_RUN (without
//                                 this shim) and waits for it (another process acting at a chosen moment: a rotate
//                                 deleting the checkpoint being read)
//                     OP is write, pwrite, fsync, rename (rename and renameat2), link, copy_file_range or mmap
//   CKPT_FAULT_MATCH  only paths containing this string count (default: every path)
// Calls on other paths, and every call once the fault has fired, go to libc unchanged.
#include <dlfcn.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

struct Fault {
  std::string op;
  long nth = 0;
  int error = 0;
  bool short_write = false;
  bool kill = false;
  bool truncate = false;
  bool run = false;
  std::string match;
  bool valid = false;
};

const Fault& fault() {
  static const Fault f = [] {
    Fault f;
    const char* spec = std::getenv("CKPT_FAULT");
    if (!spec) return f;
    char op[32] = {0};
    char what[32] = {0};
    if (std::sscanf(spec, "%31[^:]:%ld:%31s", op, &f.nth, what) != 3) return f;
    f.op = op;
    f.short_write = std::strcmp(what, "short") == 0;
    f.kill = std::strcmp(what, "kill") == 0;
    f.truncate = std::strcmp(what, "truncate") == 0;
    f.run = std::strcmp(what, "run") == 0;
    f.error = f.short_write || f.kill || f.truncate || f.run ? 0 : std::atoi(what);
    if (const char* m = std::getenv("CKPT_FAULT_MATCH")) f.match = m;
    f.valid = true;
    return f;
  }();
  return f;
}

std::atomic<long> g_calls{0};

std::string fd_path(int fd) {
  char link[64];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  char target[4096];
  const ssize_t n = ::readlink(link, target, sizeof target - 1);
  return n > 0 ? std::string(target, static_cast<std::size_t>(n)) : std::string();
}

// Whether this call is the one to fail.
bool fires(const char* op, const std::string& path) {
  const Fault& f = fault();
  if (!f.valid || f.op != op) return false;
  if (!f.match.empty() && path.find(f.match) == std::string::npos) return false;
  if (g_calls.fetch_add(1) + 1 != f.nth) return false;
  if (f.kill) ::raise(SIGKILL);
  return true;
}

template <typename F>
F next(const char* name) {
  return reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" {

ssize_t write(int fd, const void* buf, size_t count) {
  static auto real = next<ssize_t (*)(int, const void*, size_t)>("write");
  if (fd > 2 && fires("write", fd_path(fd))) {
    if (fault().short_write) return real(fd, buf, count / 2 > 0 ? count / 2 : count);
    errno = fault().error;
    return -1;
  }
  return real(fd, buf, count);
}

ssize_t pwrite64(int fd, const void* buf, size_t count, off64_t offset) {
  static auto real = next<ssize_t (*)(int, const void*, size_t, off64_t)>("pwrite64");
  if (fires("pwrite", fd_path(fd))) {
    if (fault().short_write) return real(fd, buf, count / 2 > 0 ? count / 2 : count, offset);
    errno = fault().error;
    return -1;
  }
  return real(fd, buf, count, offset);
}

ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset) { return pwrite64(fd, buf, count, offset); }

int fsync(int fd) {
  static auto real = next<int (*)(int)>("fsync");
  if (fires("fsync", fd_path(fd))) {
    errno = fault().error;
    return -1;
  }
  return real(fd);
}

int rename(const char* from, const char* to) {
  static auto real = next<int (*)(const char*, const char*)>("rename");
  if (fires("rename", to)) {
    errno = fault().error;
    return -1;
  }
  return real(from, to);
}

int renameat2(int olddirfd, const char* from, int newdirfd, const char* to, unsigned int flags) {
  static auto real = next<int (*)(int, const char*, int, const char*, unsigned int)>("renameat2");
  if (fires("rename", to)) {
    errno = fault().error;
    return -1;
  }
  return real(olddirfd, from, newdirfd, to, flags);
}

int link(const char* from, const char* to) {
  static auto real = next<int (*)(const char*, const char*)>("link");
  if (fires("link", to)) {
    errno = fault().error;
    return -1;
  }
  return real(from, to);
}

ssize_t copy_file_range(int fd_in, off64_t* off_in, int fd_out, off64_t* off_out, size_t len, unsigned int flags) {
  static auto real = next<ssize_t (*)(int, off64_t*, int, off64_t*, size_t, unsigned int)>("copy_file_range");
  if (fires("copy_file_range", fd_path(fd_out))) {
    if (fault().short_write) return real(fd_in, off_in, fd_out, off_out, len / 2 > 0 ? len / 2 : len, flags);
    errno = fault().error;
    return -1;
  }
  return real(fd_in, off_in, fd_out, off_out, len, flags);
}

void* mmap64(void* address, size_t length, int protection, int flags, int fd, off64_t offset) {
  static auto real = next<void* (*)(void*, size_t, int, int, int, off64_t)>("mmap64");
  void* mapped = real(address, length, protection, flags, fd, offset);
  if (mapped != MAP_FAILED && fd >= 0 && fault().run && fires("mmap", fd_path(fd))) {
    ::unsetenv("LD_PRELOAD");  // the command runs without the shim (the fault has fired: nothing else here changes)
    ::unsetenv("CKPT_FAULT");
    if (const char* command = std::getenv("CKPT_FAULT_RUN"); command == nullptr || std::system(command) != 0) {
      std::fprintf(stderr, "fault shim: CKPT_FAULT_RUN failed\n");
    }
  }
  if (mapped != MAP_FAILED && fd >= 0 && fault().truncate && fires("mmap", fd_path(fd))) {
    const int writable = ::open(fd_path(fd).c_str(), O_WRONLY);
    if (writable >= 0) {
      struct stat st {};
      const off_t cut = ::fstat(writable, &st) == 0 && st.st_size < 8192 ? st.st_size / 2 : 4096;
      if (::ftruncate(writable, cut) != 0) std::perror("fault shim: ftruncate");
      ::close(writable);
    }
  }
  return mapped;
}

void* mmap(void* address, size_t length, int protection, int flags, int fd, off_t offset) {
  return mmap64(address, length, protection, flags, fd, offset);
}

}  // extern "C"
