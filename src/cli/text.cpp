#include "cli/text.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <string_view>

namespace ckpt::cli {

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
    case 's': unit = 1; number.pop_back(); break;
    case 'm': unit = 60; number.pop_back(); break;
    case 'h': unit = 3600; number.pop_back(); break;
    case 'd': unit = 86400; number.pop_back(); break;
    default: break;
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
      plain_(std::getenv("NO_COLOR") != nullptr || (std::getenv("TERM") && std::string_view(std::getenv("TERM")) == "dumb")),
      label_(std::move(label)) {}

ProgressLine::~ProgressLine() { clear(); }

void ProgressLine::clear() {
  if (shown_width_ == 0) return;
  if (plain_) std::cerr << '\r' << std::string(shown_width_, ' ') << '\r' << std::flush;
  else std::cerr << "\r\033[K" << std::flush;
  shown_width_ = 0;
}

void ProgressLine::update(std::uint64_t done, std::uint64_t total) {
  if (!enabled_ || total < (64u << 20)) return;
  const auto now = std::chrono::steady_clock::now();
  if (shown_width_ > 0 && now - last_ < std::chrono::milliseconds(100) && done < total) return;
  last_ = now;
  const std::string line = fmt::format("{}: {:3d}% ({} of {})", label_, static_cast<int>(100.0 * static_cast<double>(done) / static_cast<double>(total)),
                                       human_bytes(done), human_bytes(total));
  const std::size_t pad = shown_width_ > line.size() ? shown_width_ - line.size() : 0;
  std::cerr << '\r' << line << std::string(pad, ' ') << std::flush;
  shown_width_ = line.size() + pad;
}

}  // namespace ckpt::cli
