#include "checkpoint/shards.hpp"

#include <filesystem>
#include <set>

#include "checkpoint/source.hpp"
#include "checkpoint/value_data.hpp"
#include "format/json.hpp"
#include "util/error.hpp"

namespace ckpt::checkpoint {
namespace fs = std::filesystem;
using pickle::Kind;
using pickle::NodeId;

namespace {

// The rank in `name` when it is PREFIX<digits>SUFFIX (digits without a leading zero, below 2^20).
std::optional<int> rank_in(const std::string& name, const std::string& prefix, const std::string& suffix) {
  if (name.size() <= prefix.size() + suffix.size() || !name.starts_with(prefix) || !name.ends_with(suffix))
    return std::nullopt;
  const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.size() > 7 || (digits.size() > 1 && digits[0] == '0')) return std::nullopt;
  int rank = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    rank = rank * 10 + (c - '0');
  }
  return rank < (1 << 20) ? std::optional<int>(rank) : std::nullopt;
}

std::set<int> ranks_of(const std::string& dir, const std::string& prefix, const std::string& suffix) {
  std::set<int> ranks;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (const auto r = rank_in(entry.path().filename().string(), prefix, suffix); r && entry.is_regular_file(ec))
      ranks.insert(*r);
  }
  if (ec) throw Error(ErrorKind::io, dir, "", "cannot list directory: " + ec.message());
  return ranks;
}

// A shard's {"rank", "world_size"} entry.
std::pair<std::int64_t, std::int64_t> shard_identity(const std::string& path) {
  const auto source = load_source(path);
  const auto& g = source->graph();
  auto bad = [&](const std::string& what) -> std::pair<std::int64_t, std::int64_t> {
    throw Error(ErrorKind::corrupt, path, kShardKey, what);
  };
  // Another tool's file of that name is not ours to judge: unreadable (never deleted by rotate), not corrupt.
  if (!g.is(g.root(), Kind::dict))
    throw Error(ErrorKind::unsupported, path, "", "not an optimizer shard written by ckpt");
  const auto& items = g.at(g.root()).items;
  for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
    if (!g.is(items[i], Kind::string) || g.at(items[i]).text != kShardKey) continue;
    if (!g.is(items[i + 1], Kind::dict)) return bad("not a dict");
    std::optional<std::int64_t> rank, world;
    const auto& fields = g.at(items[i + 1]).items;
    for (std::size_t k = 0; k + 1 < fields.size(); k += 2) {
      if (!g.is(fields[k], Kind::string) || !g.is(fields[k + 1], Kind::integer)) continue;
      if (g.at(fields[k]).text == "rank") rank = g.at(fields[k + 1]).integer;
      if (g.at(fields[k]).text == "world_size") world = g.at(fields[k + 1]).integer;
    }
    if (!rank || !world || *world < 1 || *world > (1 << 20) || *rank < 0 || *rank >= *world)
      return bad("rank or world_size missing or out of range");
    return {*rank, *world};
  }
  throw Error(ErrorKind::unsupported, path, kShardKey, "missing: not an optimizer shard written by ckpt");
}

}  // namespace

std::string optimizer_shard_name(int rank) { return "optimizer_" + std::to_string(rank) + ".pt"; }

std::string rng_state_name(int rank, int world_size) {
  return world_size <= 1 ? std::string("rng_state.pth") : "rng_state_" + std::to_string(rank) + ".pth";
}

std::optional<OptimizerShards> find_optimizer_shards(const std::string& dir) {
  const std::set<int> present = ranks_of(dir, "optimizer_", ".pt");
  if (present.empty()) return std::nullopt;
  if (!present.count(0))
    throw Error(ErrorKind::corrupt, (fs::path(dir) / optimizer_shard_name(0)).string(), "", "missing optimizer shard");
  OptimizerShards shards;
  const std::string first = (fs::path(dir) / optimizer_shard_name(0)).string();
  const auto [rank0, world] = shard_identity(first);
  if (rank0 != 0) throw Error(ErrorKind::corrupt, first, kShardKey, "holds rank " + std::to_string(rank0) + "'s shard");
  shards.world_size = static_cast<int>(world);
  for (int r = 0; r < shards.world_size; ++r) {
    const std::string name = optimizer_shard_name(r);
    const std::string path = (fs::path(dir) / name).string();
    if (!present.count(r))
      throw Error(ErrorKind::corrupt, path, "", "missing optimizer shard (of " + std::to_string(world) + ")");
    if (r > 0) {
      const auto [rank, shard_world] = shard_identity(path);
      if (rank != r || shard_world != world) {
        throw Error(ErrorKind::corrupt, path, kShardKey,
                    "rank " + std::to_string(rank) + " of " + std::to_string(shard_world) + ", but the set is " +
                        std::to_string(world) + " shards");
      }
    }
    shards.files.push_back(name);
  }
  if (*present.rbegin() >= shards.world_size) {
    throw Error(ErrorKind::corrupt, (fs::path(dir) / optimizer_shard_name(*present.rbegin())).string(), "",
                "beyond the " + std::to_string(world) + " shards optimizer_0.pt counts");
  }
  return shards;
}

void check_shard_set(const std::vector<const Source*>& shards) {
  std::set<std::int64_t> covered;
  std::optional<json::Json> groups;
  std::int64_t parameters = 0;
  for (const Source* s : shards) {
    const auto& g = s->graph();
    auto bad = [&](const std::string& where, const std::string& what) {
      throw Error(ErrorKind::corrupt, s->path, where, what);
    };
    const NodeId* shard = g.is(g.root(), Kind::dict) ? g.dict_get(g.root(), kShardKey) : nullptr;
    const NodeId* state = g.is(g.root(), Kind::dict) ? g.dict_get(g.root(), "state") : nullptr;
    const NodeId* param_groups = g.is(g.root(), Kind::dict) ? g.dict_get(g.root(), "param_groups") : nullptr;
    if (!shard || !state || !param_groups || !g.is(*state, Kind::dict) || !g.is(*param_groups, Kind::list))
      bad("", "not an optimizer shard");
    const json::Json these_groups = to_data(g, *param_groups);
    if (!groups) {
      groups = these_groups;
      const json::Elements group_list(these_groups, s->path, "param_groups");
      for (std::size_t i = 0; i < group_list.size(); ++i) {
        parameters += static_cast<std::int64_t>(group_list.at(i).object().array("params").size());
      }
    } else if (these_groups != *groups) {
      bad("param_groups", "differ from the first shard's");
    }
    const NodeId* params = g.is(*shard, Kind::dict) ? g.dict_get(*shard, "params") : nullptr;
    if (!params || !g.is(*params, Kind::list)) bad(kShardKey, "no params list");
    std::set<std::int64_t> owned;
    for (NodeId p : g.at(*params).items) {
      if (!g.is(p, Kind::integer) || g.at(p).integer < 0 || g.at(p).integer >= parameters)
        bad("shard.params", "an index outside param_groups");
      if (!covered.insert(g.at(p).integer).second)
        bad("shard.params", "index " + std::to_string(g.at(p).integer) + " owned by two shards");
      owned.insert(g.at(p).integer);
    }
    const auto& items = g.at(*state).items;
    for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
      if (!g.is(items[i], Kind::integer) || !owned.count(g.at(items[i]).integer))
        bad("state", "state of a parameter the shard does not own");
    }
  }
  if (static_cast<std::int64_t>(covered.size()) != parameters) {
    throw Error(
        ErrorKind::corrupt, shards.empty() ? "" : shards.back()->path, kShardKey,
        "the shards own " + std::to_string(covered.size()) + " of " + std::to_string(parameters) + " parameters");
  }
}

int checkpoint_world_size(const std::string& dir) {
  if (const auto shards = find_optimizer_shards(dir)) return shards->world_size;
  const std::set<int> rng = ranks_of(dir, "rng_state_", ".pth");
  return rng.empty() ? 1 : *rng.rbegin() + 1;
}

}  // namespace ckpt::checkpoint
