#include "cli/text.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <string_view>

namespace ckpt::cli {
namespace {

// The length of the well-formed UTF-8 sequence at the start of `text` (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF), or 0.
std::size_t utf8_sequence_length(std::string_view text) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(0);
  std::size_t length = 0;
  unsigned char low = 0x80, high = 0xBF;  // the allowed range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) low = 0xA0;   // overlong
    if (lead == 0xED) high = 0x9F;  // surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) low = 0x90;   // overlong
    if (lead == 0xF4) high = 0x8F;  // above U+10FFFF
  } else {
    return 0;
  }
  if (text.size() < length || byte(1) < low || byte(1) > high) return 0;
  for (std::size_t i = 2; i < length; ++i) {
    if (byte(i) < 0x80 || byte(i) > 0xBF) return 0;
  }
  return length;
}

std::uint32_t decode_utf8(std::string_view sequence) {
  const auto byte = [&](std::size_t i) { return static_cast<std::uint32_t>(static_cast<unsigned char>(sequence[i])); };
  std::uint32_t code = byte(0) & (sequence.size() == 2 ? 0x1F : sequence.size() == 3 ? 0x0F : 0x07);
  for (std::size_t i = 1; i < sequence.size(); ++i) code = (code << 6) | (byte(i) & 0x3F);
  return code;
}

// Code points that are valid UTF-8 yet act on the terminal or on the layout rather than print.
bool is_control_code_point(std::uint32_t code) {
  return (code >= 0x80 && code <= 0x9F) ||      // C1 controls (0x9B is CSI to some terminals)
         code == 0x2028 || code == 0x2029 ||    // line and paragraph separators
         (code >= 0x202A && code <= 0x202E) ||  // bidirectional embeddings and overrides
         (code >= 0x2066 && code <= 0x2069);    // bidirectional isolates
}

}  // namespace

std::string printable(std::string_view text, bool keep_newlines) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      if (c == '\n')
        out += keep_newlines ? "\n" : "\\n";
      else if (c == '\t')
        out += "\\t";
      else if (c == '\r')
        out += "\\r";
      else if (c < 0x20 || c == 0x7F)
        out += fmt::format("\\x{:02x}", c);
      else
        out += static_cast<char>(c);
      ++i;
      continue;
    }
    const std::size_t length = utf8_sequence_length(text.substr(i));
    if (length == 0) {
      out += fmt::format("\\x{:02x}", c);
      ++i;
      continue;
    }
    const std::string_view sequence = text.substr(i, length);
    const std::uint32_t code = decode_utf8(sequence);
    if (is_control_code_point(code))
      out += fmt::format("\\u{{{:x}}}", code);
    else
      out += sequence;
    i += length;
  }
  return out;
}

void print_error(std::string_view message) { std::cerr << "ckpt: error: " << printable(message) << "\n"; }

void print_warning(std::string_view message) { std::cerr << "ckpt: warning: " << printable(message) << "\n"; }

void print_text(std::string_view text) { std::cout << printable(text, true); }

std::string human_bytes(std::uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return fmt::format("{} B", bytes);
  double v = static_cast<double>(bytes);
  std::size_t unit = 0;
  while (v >= 1024 && unit + 1 < std::size(kUnits)) {
    v /= 1024;
    ++unit;
  }
  return fmt::format("{:.1f} {}", v, kUnits[unit]);
}

std::string grouped(std::uint64_t n) {
  std::string digits = std::to_string(n);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string shape_text(const std::vector<std::int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

std::optional<double> parse_duration(const std::string& text) {
  if (text.empty()) return std::nullopt;
  double unit = 1;
  std::string number = text;
  switch (text.back()) {
    case 's':
      unit = 1;
      number.pop_back();
      break;
    case 'm':
      unit = 60;
      number.pop_back();
      break;
    case 'h':
      unit = 3600;
      number.pop_back();
      break;
    case 'd':
      unit = 86400;
      number.pop_back();
      break;
    default:
      break;
  }
  if (number.empty() || number.find_first_not_of("0123456789.") != std::string::npos) return std::nullopt;
  try {
    return std::stod(number) * unit;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::string human_age(double seconds) {
  if (seconds < 0) seconds = 0;
  if (seconds < 120) return fmt::format("{}s", static_cast<long long>(seconds));
  if (seconds < 7200) return fmt::format("{}m", static_cast<long long>(seconds / 60));
  if (seconds < 172800) return fmt::format("{}h", static_cast<long long>(seconds / 3600));
  return fmt::format("{}d", static_cast<long long>(seconds / 86400));
}

std::string number_text(const std::optional<double>& value) {
  if (!value) return "-";
  return fmt::format("{:.6g}", *value);
}

void Table::add(std::vector<std::string> row) {
  for (auto& cell : row) cell = printable(cell);
  rows_.push_back(std::move(row));
}

std::string Table::render(const std::string& indent) const {
  std::vector<std::size_t> widths;
  for (const auto& row : rows_) {
    widths.resize(std::max(widths.size(), row.size()), 0);
    for (std::size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows_) {
    std::string line = indent;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

}  // namespace ckpt::cli

namespace ckpt::cli {

ProgressLine::ProgressLine(bool enabled, std::string label)
    : enabled_(enabled && ::isatty(STDERR_FILENO)),
      plain_(std::getenv("NO_COLOR") != nullptr ||
             (std::getenv("TERM") && std::string_view(std::getenv("TERM")) == "dumb")),
      label_(std::move(label)) {}

ProgressLine::~ProgressLine() { clear(); }

void ProgressLine::clear() {
  if (shown_width_ == 0) return;
  if (plain_)
    std::cerr << '\r' << std::string(shown_width_, ' ') << '\r' << std::flush;
  else
    std::cerr << "\r\033[K" << std::flush;
  shown_width_ = 0;
}

void ProgressLine::update(std::uint64_t done, std::uint64_t total) {
  if (!enabled_ || total < (64u << 20)) return;
  const auto now = std::chrono::steady_clock::now();
  if (shown_width_ > 0 && now - last_ < std::chrono::milliseconds(100) && done < total) return;
  last_ = now;
  const std::string line = fmt::format("{}: {:3d}% ({} of {})", label_,
                                       static_cast<int>(100.0 * static_cast<double>(done) / static_cast<double>(total)),
                                       human_bytes(done), human_bytes(total));
  const std::size_t pad = shown_width_ > line.size() ? shown_width_ - line.size() : 0;
  std::cerr << '\r' << line << std::string(pad, ' ') << std::flush;
  shown_width_ = line.size() + pad;
}

}  // namespace ckpt::cli
