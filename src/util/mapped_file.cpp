#include "util/mapped_file.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <mutex>
#include <utility>

#include "util/error.hpp"

namespace ckpt {

const char* file_type_name(mode_t mode) {
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISLNK(mode)) return "a symlink";
  return S_ISREG(mode) ? "a regular file" : "of an unknown type";
}

ReadOnlyFile::ReadOnlyFile(std::string path) : path_(std::move(path)) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever; its type is known only
  // once it is open (checking before opening would race with a rename).
  fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  struct stat st {};
  if (fd_ < 0) {
    const int e = errno;
    if (e == ENXIO && ::stat(path_.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {  // a socket cannot be opened
      throw Error(ErrorKind::unsupported, path_, "",
                  std::string("not a regular file (") + file_type_name(st.st_mode) + ")");
    }
    if (e == ENOENT) throw Error(ErrorKind::not_found, path_, "", "no such file or directory");
    fail_io(path_, "open", e);
  }
  if (::fstat(fd_, &st) != 0) {
    int e = errno;
    ::close(fd_);
    fd_ = -1;
    fail_io(path_, "stat", e);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd_);
    fd_ = -1;
    if (S_ISDIR(st.st_mode)) throw Error(ErrorKind::invalid_argument, path_, "", "is a directory, expected a file");
    throw Error(ErrorKind::unsupported, path_, "",
                std::string("not a regular file (") + file_type_name(st.st_mode) + ")");
  }
  ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) & ~O_NONBLOCK);  // blocking reads, as on any regular file
  size_ = static_cast<std::uint64_t>(st.st_size);
}

ReadOnlyFile::~ReadOnlyFile() {
  if (fd_ >= 0) ::close(fd_);
}

ReadOnlyFile::ReadOnlyFile(ReadOnlyFile&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)), size_(std::exchange(other.size_, 0)) {}

ReadOnlyFile& ReadOnlyFile::operator=(ReadOnlyFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void ReadOnlyFile::read_at(std::uint64_t offset, std::span<std::uint8_t> out) const {
  if (offset > size_ || out.size() > size_ - offset) {
    throw Error(ErrorKind::corrupt, path_, "byte " + std::to_string(offset), "read past the end of the file");
  }
  std::size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::pread(fd_, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_io(path_, "read", errno);
    if (n == 0) fail_shrank(path_, "byte " + std::to_string(offset + done));
    done += static_cast<std::size_t>(n);
  }
}

namespace {

// The live maps, for the SIGBUS handler, which may only read atomics. Slots are claimed and released under
// `g_maps_mutex`; each is a seqlock: `version` is odd while `begin` and `length` change, so a handler that
// reads a slot being reused on another thread sees a changed version and ignores it, never an old address
// with a new length.
struct LiveMap {
  std::atomic<std::uint64_t> version{0};
  std::atomic<std::uintptr_t> begin{0};
  std::atomic<std::size_t> length{0};
  std::atomic<bool> shrunk{false};  // set by the handler

  void publish(std::uintptr_t new_begin, std::size_t new_length) {
    const std::uint64_t v = version.load(std::memory_order_relaxed);
    version.store(v + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    begin.store(new_begin, std::memory_order_relaxed);
    length.store(new_length, std::memory_order_relaxed);
    version.store(v + 2, std::memory_order_release);
  }
};
constexpr std::size_t kMaxLiveMaps = 4096;
std::array<LiveMap, kMaxLiveMaps> g_maps;
std::mutex g_maps_mutex;
std::string g_shrunk_path;  // guarded by g_maps_mutex: a shrunk map's file, recorded when the map is released
std::array<std::string, kMaxLiveMaps> g_map_paths;  // guarded by g_maps_mutex
std::array<int, kMaxLiveMaps> g_map_fds;            // guarded by g_maps_mutex
struct sigaction g_previous_sigbus {};
std::uintptr_t g_page_mask = 0;

// Whether the file of a live slot is shorter than its map: a fault past the end was caught, or the file lost
// bytes of its last page (which read as zeros without any fault). Called under g_maps_mutex.
bool map_shrank(std::size_t slot) {
  struct stat st {};
  return g_maps[slot].shrunk.load(std::memory_order_relaxed) ||
         (::fstat(g_map_fds[slot], &st) == 0 &&
          static_cast<std::uint64_t>(st.st_size) < g_maps[slot].length.load(std::memory_order_relaxed));
}

// Replaces the pages of one of our maps from the one at `address` on with zeros; false when no map of ours
// holds `address` as it stands.
bool zero_fill_map_at(std::uintptr_t address) {
  for (LiveMap& map : g_maps) {
    const std::uint64_t before = map.version.load(std::memory_order_acquire);
    const std::uintptr_t begin = map.begin.load(std::memory_order_relaxed);
    const std::size_t length = map.length.load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if ((before & 1) != 0 || map.version.load(std::memory_order_relaxed) != before) continue;
    if (begin == 0 || address < begin || address - begin >= length) continue;
    const std::uintptr_t page = address & g_page_mask;
    if (::mmap(reinterpret_cast<void*>(page), begin + length - page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
               -1, 0) == MAP_FAILED) {
      return false;
    }
    map.shrunk.store(true, std::memory_order_relaxed);
    return true;
  }
  return false;
}

void on_sigbus(int signal, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  // BUS_ADRERR: an access to a mapped page with no file behind it (a raised or queued SIGBUS is not one).
  // The faulting read is retried once the handler returns, and sees zeros.
  if (info->si_code == BUS_ADRERR && zero_fill_map_at(reinterpret_cast<std::uintptr_t>(info->si_addr))) {
    errno = saved_errno;
    return;
  }
  // Not one of ours: what would have happened without this handler. The previous handler stays chained
  // (another copy of this code in the trainer library, a sanitizer's); otherwise the default action.
  if ((g_previous_sigbus.sa_flags & SA_SIGINFO) && g_previous_sigbus.sa_sigaction != nullptr) {
    g_previous_sigbus.sa_sigaction(signal, info, context);
  } else if (!(g_previous_sigbus.sa_flags & SA_SIGINFO) && g_previous_sigbus.sa_handler != SIG_DFL &&
             g_previous_sigbus.sa_handler != SIG_IGN) {
    g_previous_sigbus.sa_handler(signal);
  } else {
    // Ignoring a fault's SIGBUS would retry the access forever: die of it, as the kernel would have us.
    struct sigaction default_action {};
    default_action.sa_handler = SIG_DFL;
    ::sigaction(SIGBUS, &default_action, nullptr);
    ::raise(signal);  // blocked until this handler returns, then the default action
  }
  errno = saved_errno;
}

void install_sigbus_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    g_page_mask = ~static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE) - 1);
    struct sigaction action {};
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGBUS, &action, &g_previous_sigbus);
  });
}

}  // namespace

MappedFile::MappedFile(std::string path) : file_(std::move(path)) {
  size_ = static_cast<std::size_t>(file_.size());
  if (size_ == 0) return;
  install_sigbus_handler();
  std::lock_guard lock(g_maps_mutex);
  for (std::size_t i = 0; i < kMaxLiveMaps && slot_ < 0; ++i) {
    if (g_map_paths[i].empty()) slot_ = static_cast<int>(i);
  }
  if (slot_ < 0) throw Error(ErrorKind::io, file_.path(), "", "too many files mapped at once");
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, file_.fd(), 0);
  if (p == MAP_FAILED) {
    slot_ = -1;
    fail_io(file_.path(), "mmap", errno);
  }
  data_ = static_cast<const std::uint8_t*>(p);
  LiveMap& map = g_maps[static_cast<std::size_t>(slot_)];
  g_map_paths[static_cast<std::size_t>(slot_)] = file_.path();
  g_map_fds[static_cast<std::size_t>(slot_)] = file_.fd();
  map.shrunk.store(false, std::memory_order_relaxed);
  map.publish(reinterpret_cast<std::uintptr_t>(data_), size_);
}

MappedFile::~MappedFile() { release(); }

MappedFile::MappedFile(MappedFile&& other) noexcept
    : file_(std::move(other.file_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      slot_(std::exchange(other.slot_, -1)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    file_ = std::move(other.file_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    slot_ = std::exchange(other.slot_, -1);
  }
  return *this;
}

void MappedFile::release() {
  if (data_ != nullptr) {
    std::lock_guard lock(g_maps_mutex);
    const auto slot = static_cast<std::size_t>(slot_);
    if (g_shrunk_path.empty() && map_shrank(slot)) g_shrunk_path = g_map_paths[slot];
    g_maps[slot].publish(0, 0);
    g_map_paths[slot].clear();
    ::munmap(const_cast<std::uint8_t*>(data_), size_);
  }
  data_ = nullptr;
  size_ = 0;
  slot_ = -1;
}

void ensure_no_mapped_file_shrank() {
  std::lock_guard lock(g_maps_mutex);
  std::string path = g_shrunk_path;
  for (std::size_t i = 0; i < kMaxLiveMaps && path.empty(); ++i) {
    if (!g_map_paths[i].empty() && map_shrank(i)) path = g_map_paths[i];
  }
  if (!path.empty()) fail_shrank(path, "");
}

}  // namespace ckpt
