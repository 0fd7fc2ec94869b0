// Small pieces of human-readable output shared by the subcommands' text renderers.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ckpt::cli {

// Text that may come from a file or a directory listing (names, keys, messages quoting them), made safe to show:
// C0 controls, DEL, C1 controls, Unicode line and paragraph separators and bidirectional controls become escapes
// (\n, \t, \r, \xNN for a byte, \u{NN} for a code point), and so does every byte that is not part of valid
// UTF-8, so a file can neither split a line nor drive the terminal. Printable UTF-8 is kept as it is.
// keep_newlines keeps '\n' for text whose lines a renderer made (its fields escaped as they were put in).
std::string printable(std::string_view text, bool keep_newlines = false);

// The one error line, `ckpt: error: MESSAGE` on stderr, and its warning twin: always exactly one line.
void print_error(std::string_view message);
void print_warning(std::string_view message);
// A text report on stdout: printable(text, keep_newlines = true).
void print_text(std::string_view text);

// 1536 -> "1.5 KiB"; exact bytes below 1 KiB.
std::string human_bytes(std::uint64_t bytes);
// 1234567 -> "1,234,567".
std::string grouped(std::uint64_t n);
// [2, 3] -> "[2, 3]"; [] -> "[]".
std::string shape_text(const std::vector<std::int64_t>& shape);

// "90" or "90s", "15m", "2h", "1d" -> seconds; nullopt for anything else.
std::optional<double> parse_duration(const std::string& text);
// Seconds -> "45s", "12m", "3h", "5d" (rounded down to the largest unit).
std::string human_age(double seconds);
// Metric values as Python prints short floats: "0.25", "3.999075", "-"; NaN as "nan".
std::string number_text(const std::optional<double>& value);

// A progress line on stderr ("LABEL:  42% (1.2 GiB of 3.0 GiB)"), only on a terminal and only for work big enough to
// wait for; the destructor clears it. With TERM=dumb or NO_COLOR set it writes no escape sequence (spaces clear it).
class ProgressLine {
 public:
  ProgressLine(bool enabled, std::string label);
  ~ProgressLine();
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;
  void set_label(std::string label) { label_ = std::move(label); }
  void update(std::uint64_t done, std::uint64_t total);

 private:
  void clear();

  bool enabled_;
  bool plain_;  // no escape sequences
  std::string label_;
  std::size_t shown_width_ = 0;  // of the line on screen, 0 when none is
  std::chrono::steady_clock::time_point last_;
};

// Runs `work(progress)` with a progress line that is cleared when `work` returns or throws, so that what is
// printed of its result (or its error) never mixes with it.
template <typename Work>
auto with_progress(bool enabled, std::string label, Work work) {
  ProgressLine progress(enabled, std::move(label));
  return work(progress);
}

// A table with left-aligned columns separated by two spaces; the last column is not padded. Cells are made
// printable() as they are added, so a name holding a newline stays in its row.
class Table {
 public:
  explicit Table(std::vector<std::string> header) { add(std::move(header)); }
  void add(std::vector<std::string> row);
  std::string render(const std::string& indent = "") const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace ckpt::cli
