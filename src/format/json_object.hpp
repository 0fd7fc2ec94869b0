// Building JSON objects with many members. Json keeps an object's members in order in a vector, so its
// operator[] and emplace search the keys one by one: an object built member by member takes time quadratic in
// its size (100k keys from a file: tens of seconds). ObjectBuilder finds keys through a hash table instead.
#pragma once

#include <string>
#include <unordered_map>
#include <utility>

#include "format/json.hpp"

namespace ckpt::json {

// Collects members in order, then hands them over as one object. A repeated key keeps its first place and takes
// the last value, as assigning it to a Json object again would, and as a Python dict does.
class ObjectBuilder {
 public:
  explicit ObjectBuilder(std::size_t expected_members = 0) {
    members().reserve(expected_members);
    position_.reserve(expected_members);
  }

  void add(std::string key, Json value) {
    const auto [it, inserted] = position_.try_emplace(key, members().size());
    if (inserted) members().emplace_back(std::move(key), std::move(value));
    else members()[it->second].second = std::move(value);
  }

  Json build() && { return Json(std::move(object_)); }

 private:
  // The members as the plain vector underneath Json's ordered map (appending to it searches nothing).
  Json::object_t::Container& members() { return object_; }

  Json::object_t object_;
  std::unordered_map<std::string, std::size_t> position_;
};

}  // namespace ckpt::json
