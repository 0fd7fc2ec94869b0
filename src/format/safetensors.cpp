#include "format/safetensors.hpp"

#include <algorithm>
#include <array>

#include "format/json.hpp"
#include "util/byte_reader.hpp"
#include "util/error.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::safetensors {
namespace {

std::string tensor_where(const std::string& name) { return "tensor '" + name + "'"; }

}  // namespace

namespace {

std::uint64_t header_length(std::span<const std::uint8_t> first8) {
  ByteReader in(first8, "the safetensors file");
  const std::uint64_t n = in.u64le();
  if (n > kMaxHeaderSize) fail_corrupt("byte 0", "header length " + std::to_string(n) + " exceeds the format's limit");
  return n;
}

Header parse_header(std::string_view text, std::uint64_t file_size) {
  Header h;
  h.header_size = text.size();
  h.buffer_offset = 8 + h.header_size;
  if (text.empty() || text.front() != '{') fail_corrupt("byte 8", "header does not start with '{'");

  json::Json header;
  try {
    header = json::parse(text);
  } catch (const Error& e) {
    // Offsets inside the header are shifted by the 8-byte length prefix.
    throw Error(e.kind(), "", "header", e.detail() + " (" + e.where() + " of the header)");
  }
  const json::Fields fields(header, "", "header");
  fields.for_each([&](const std::string& name, const json::Value& value) {
    const json::Fields entry = value.object();
    if (name == "__metadata__") {
      entry.for_each(
          [&](const std::string& key, const json::Value& text) { h.metadata.emplace_back(key, text.string()); });
      return;
    }
    const std::string where = tensor_where(name);
    Tensor t;
    t.name = name;
    const std::string code = entry.string("dtype");
    auto dtype = dtype_from_safetensors_code(code);
    if (!dtype) fail(ErrorKind::unsupported, where, "unknown dtype " + code);
    t.dtype = *dtype;
    const json::Elements shape = entry.array("shape");
    std::uint64_t numel = 1;
    for (std::size_t i = 0; i < shape.size(); ++i) {
      const std::uint64_t dim = shape.at(i).uint64();
      if (dim > static_cast<std::uint64_t>(INT64_MAX) || !checked_mul(numel, dim, numel)) {
        fail_corrupt(where, "shape overflows 64 bits");
      }
      t.shape.push_back(static_cast<std::int64_t>(dim));
    }
    const json::Elements offsets = entry.array("data_offsets");
    if (offsets.size() != 2) offsets.fail("is not [begin, end]");
    t.begin = offsets.at(0).uint64();
    t.end = offsets.at(1).uint64();
    std::uint64_t nbytes = 0;
    if (t.end < t.begin) fail_corrupt(where, "data_offsets end before begin");
    if (!checked_mul(numel, element_size(t.dtype), nbytes) || nbytes != t.end - t.begin) {
      fail_corrupt(where, "holds " + std::to_string(t.end - t.begin) + " bytes but its shape and dtype need " +
                              (nbytes == 0 && numel != 0 ? std::string("more than 2^64") : std::to_string(nbytes)));
    }
    h.tensors.push_back(std::move(t));
  });

  std::stable_sort(h.tensors.begin(), h.tensors.end(), [](const Tensor& a, const Tensor& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t expected = 0;
  for (const auto& t : h.tensors) {
    if (t.begin != expected) {
      fail_corrupt(tensor_where(t.name), t.begin < expected
                                             ? "overlaps the previous tensor's bytes"
                                             : "leaves a gap before its bytes (offset " + std::to_string(t.begin) +
                                                   ", expected " + std::to_string(expected) + ")");
    }
    expected = t.end;
  }
  std::uint64_t total = 0;
  if (!checked_add(h.buffer_offset, expected, total) || total != file_size) {
    fail_corrupt("byte " + std::to_string(file_size),
                 "file is " + std::to_string(file_size) + " bytes but its header accounts for " +
                     (total == 0 ? std::string("more than 2^64") : std::to_string(total)));
  }
  return h;
}

}  // namespace

Header parse(std::span<const std::uint8_t> file) {
  ByteReader in(file, "the safetensors file");
  const std::uint64_t n = header_length(in.take(8));
  return parse_header(in.take_chars(n), file.size());
}

std::string make_header(std::vector<OutputTensor>& tensors,
                        const std::vector<std::pair<std::string, std::string>>& metadata) {
  // The safetensors library sorts by its Dtype enum, descending, then by name.
  auto rank = [](DType d) {
    static constexpr DType kEnumOrder[] = {DType::boolean,       DType::uint8,   DType::int8,   DType::float8_e5m2,
                                           DType::float8_e4m3fn, DType::int16,   DType::uint16, DType::float16,
                                           DType::bfloat16,      DType::int32,   DType::uint32, DType::float32,
                                           DType::complex64,     DType::float64, DType::int64,  DType::uint64};
    for (std::size_t i = 0; i < std::size(kEnumOrder); ++i) {
      if (kEnumOrder[i] == d) return static_cast<int>(i);
    }
    return -1;
  };
  std::stable_sort(tensors.begin(), tensors.end(), [&](const OutputTensor& a, const OutputTensor& b) {
    if (rank(a.dtype) != rank(b.dtype)) return rank(a.dtype) > rank(b.dtype);
    return a.name < b.name;
  });
  json::ObjectBuilder header;
  if (!metadata.empty()) {
    json::ObjectBuilder meta;
    for (const auto& [k, v] : metadata) meta.set(k, v);
    header.set("__metadata__", meta.take());
  }
  std::uint64_t offset = 0;
  for (const auto& t : tensors) {
    std::uint64_t nbytes = element_size(t.dtype);
    for (std::int64_t d : t.shape) nbytes *= static_cast<std::uint64_t>(d);
    const auto code = safetensors_code(t.dtype);
    if (!code)
      fail(ErrorKind::unsupported, tensor_where(t.name),
           std::string(torch_name(t.dtype)) + " has no safetensors dtype");
    header.set(t.name, {{"dtype", *code}, {"shape", t.shape}, {"data_offsets", {offset, offset + nbytes}}});
    offset += nbytes;
  }
  std::string text = json::dump(header.take());
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out;
  for (int i = 0; i < 8; ++i) out += static_cast<char>((static_cast<std::uint64_t>(text.size()) >> (8 * i)) & 0xFF);
  return out + text;
}

Header read_header(const std::string& path) {
  try {
    ReadOnlyFile file(path);
    std::array<std::uint8_t, 8> first8{};
    if (file.size() < 8) fail_corrupt("byte 0", "too short for a safetensors file");
    file.read_at(0, first8);
    const std::uint64_t n = header_length(first8);
    if (n > file.size() - 8)
      fail_corrupt("byte 0", "header length " + std::to_string(n) + " runs past the end of the file");
    std::string text(static_cast<std::size_t>(n), '\0');
    file.read_at(8, {reinterpret_cast<std::uint8_t*>(text.data()), text.size()});
    return parse_header(text, file.size());
  } catch (const Error& e) {
    throw e.with_context(path, "");
  }
}

void write_file(const std::string& path, std::vector<OutputTensor> tensors,
                const std::vector<std::pair<std::string, std::string>>& metadata,
                const std::function<void(const OutputTensor& tensor, AtomicFile& out)>& write_tensor,
                WriteOptions options) {
  const std::string header = make_header(tensors, metadata);
  AtomicFile out(path, options);
  out.write(header);
  for (const auto& t : tensors) write_tensor(t, out);
  out.commit();
}

}  // namespace ckpt::safetensors
