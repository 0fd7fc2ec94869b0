// A reusable byte buffer that, unlike std::vector, does not zero what is about to be overwritten: chunk buffers
// are refilled over and over, and zeroing them cost more than the work done on them.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

namespace ckpt {

class ByteBuffer {
 public:
  // Makes size() `n`; the contents are unspecified. Capacity grows by half again at least, since every fresh
  // allocation is memory the kernel must fault in anew (chunk sizes that creep up would otherwise reallocate on
  // every new maximum).
  void resize(std::size_t n) {
    if (n > capacity_) {
      capacity_ = std::max(n, capacity_ + capacity_ / 2);
      data_ = std::make_unique_for_overwrite<std::uint8_t[]>(capacity_);
    }
    size_ = n;
  }
  std::uint8_t* data() { return data_.get(); }
  const std::uint8_t* data() const { return data_.get(); }
  std::size_t size() const { return size_; }
  std::span<std::uint8_t> span() { return {data_.get(), size_}; }
  std::span<const std::uint8_t> span() const { return {data_.get(), size_}; }

 private:
  std::unique_ptr<std::uint8_t[]> data_;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
};

}  // namespace ckpt
