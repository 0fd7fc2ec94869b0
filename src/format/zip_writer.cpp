#include "format/zip_writer.hpp"

#include <algorithm>
#include <future>

#include "format/zip.hpp"
#include "util/crc32.hpp"
#include "util/error.hpp"

namespace ckpt::zip {
namespace {

constexpr std::size_t kParallelCrc = 8u << 20;

constexpr std::uint32_t kAllOnes32 = 0xFFFFFFFFu;
constexpr std::size_t kAlignment = 64;
constexpr std::size_t kChunk = 4u << 20;

class Bytes {
 public:
  Bytes& u16(std::uint32_t v) { return le(v, 2); }
  Bytes& u32(std::uint64_t v) { return le(v, 4); }
  Bytes& u64(std::uint64_t v) { return le(v, 8); }
  Bytes& text(std::string_view s) {
    data_.append(s);
    return *this;
  }
  const std::string& str() const { return data_; }

 private:
  Bytes& le(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) data_ += static_cast<char>((v >> (8 * i)) & 0xFF);
    return *this;
  }
  std::string data_;
};

}  // namespace

void Writer::add(const std::string& name, std::span<const std::uint8_t> data) {
  begin(name);
  append(data);
  end();
}

void Writer::begin(const std::string& name) {
  if (open_)
    throw Error(ErrorKind::invalid_argument, out_.destination(), "member '" + name + "'", "previous member not ended");
  open_ = true;
  Member m;
  m.name = name;
  m.header_offset = out_.position();
  // Pad with an 'FB' extra field so the data starts on a 64-byte boundary; torch writes it even when empty.
  const std::uint64_t unpadded = m.header_offset + 30 + name.size() + 4;
  const std::size_t pad = static_cast<std::size_t>((kAlignment - unpadded % kAlignment) % kAlignment);
  Bytes h;
  h.u32(kLocalSig).u16(0).u16(0x0808).u16(0).u16(0).u16(0).u32(0).u32(0).u32(0);
  h.u16(static_cast<std::uint32_t>(name.size())).u16(static_cast<std::uint32_t>(4 + pad)).text(name);
  h.text("FB").u16(static_cast<std::uint32_t>(pad)).text(std::string(pad, 'Z'));
  out_.write(h.str());
  members_.push_back(std::move(m));
}

void Writer::append(std::span<const std::uint8_t> data) {
  Member& m = members_.back();
  m.size += data.size();
  if (data.size() < kParallelCrc) {
    m.crc = crc32(data, m.crc);
    out_.write(data);
    return;
  }
  // Large appends (a trainer's tensors): the CRC on another core while this one writes.
  auto crc = std::async(std::launch::async, [data, previous = m.crc] { return crc32(data, previous); });
  try {
    out_.write(data);
  } catch (...) {
    crc.wait();
    throw;
  }
  m.crc = crc.get();
}

void Writer::append_file_range(const ReadOnlyFile& source, std::uint64_t offset, std::uint64_t length) {
  std::vector<std::uint8_t> buffer(static_cast<std::size_t>(std::min<std::uint64_t>(length, kChunk)));
  while (length > 0) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(length, buffer.size()));
    source.read_at(offset, std::span(buffer).first(n));
    append(std::span(buffer).first(n));
    offset += n;
    length -= n;
  }
}

void Writer::end() {
  const Member& m = members_.back();
  Bytes d;
  d.u32(kDescriptorSig).u32(m.crc);
  if (m.size >= kAllOnes32)
    d.u64(m.size).u64(m.size);
  else
    d.u32(m.size).u32(m.size);
  out_.write(d.str());
  open_ = false;
}

void Writer::finish() {
  const std::uint64_t cd_offset = out_.position();
  for (const Member& m : members_) {
    const bool big_size = m.size >= kAllOnes32;
    const bool big_offset = m.header_offset >= kAllOnes32;
    Bytes extra;
    if (big_size || big_offset) {
      Bytes fields;
      if (big_size) fields.u64(m.size).u64(m.size);
      if (big_offset) fields.u64(m.header_offset);
      extra.u16(1).u16(static_cast<std::uint32_t>(fields.str().size())).text(fields.str());
    }
    Bytes c;
    c.u32(kCentralSig).u16(0).u16(0).u16(0x0808).u16(0).u16(0).u16(0).u32(m.crc);
    c.u32(big_size ? kAllOnes32 : m.size).u32(big_size ? kAllOnes32 : m.size);
    c.u16(static_cast<std::uint32_t>(m.name.size())).u16(static_cast<std::uint32_t>(extra.str().size())).u16(0);
    c.u16(0).u16(0).u32(0).u32(big_offset ? kAllOnes32 : m.header_offset);
    c.text(m.name).text(extra.str());
    out_.write(c.str());
  }
  const std::uint64_t cd_size = out_.position() - cd_offset;
  const std::uint64_t zip64_end_offset = out_.position();
  const std::uint64_t count = members_.size();
  Bytes e;
  e.u32(kZip64EndSig).u64(44).u16(0x031e).u16(0x2d).u32(0).u32(0).u64(count).u64(count).u64(cd_size).u64(cd_offset);
  e.u32(kZip64LocatorSig).u32(0).u64(zip64_end_offset).u32(1);
  e.u32(kEndSig).u16(0).u16(0);
  e.u16(std::min<std::uint64_t>(count, 0xFFFF)).u16(std::min<std::uint64_t>(count, 0xFFFF));
  e.u32(std::min<std::uint64_t>(cd_size, kAllOnes32)).u32(std::min<std::uint64_t>(cd_offset, kAllOnes32)).u16(0);
  out_.write(e.str());
}

}  // namespace ckpt::zip
