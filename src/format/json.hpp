// JSON as Python's json module writes it: like RFC 8259 plus the bare tokens NaN, Infinity and -Infinity that
// trainer_state.json holds after a diverged run. Parsed documents keep key order and are at most kMaxDepth deep.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace ckpt::json {

using Json = nlohmann::ordered_json;

inline constexpr std::size_t kMaxDepth = 512;

// Parses `text`; throws a corrupt Error naming the byte offset of a syntax error.
Json parse(std::string_view text);

// Reads and parses a whole file (at most `max_bytes`); throws Error naming `path`.
Json parse_file(const std::string& path, std::uint64_t max_bytes = 256u << 20);

// Serialises with invalid UTF-8 replaced, never throwing on odd strings from untrusted files.
std::string dump(const Json& value, int indent = -1);

// As Python's json.dumps(value, indent=indent, sort_keys=True) writes it (how transformers writes
// trainer_state.json and config.json): keys sorted at every level, non-ASCII escaped, NaN and Infinity as bare tokens.
std::string dump_python_sorted(const Json& value, int indent);

}  // namespace ckpt::json
