// Rendering of a run listing, shared by `ckpt list` and `ckpt inspect RUN_DIR`.
#pragma once

#include <string>

#include "checkpoint/listing.hpp"
#include "format/json.hpp"

namespace ckpt::cli {

json::Json listing_json(const checkpoint::RunListing& listing);
std::string listing_text(const checkpoint::RunListing& listing);

}  // namespace ckpt::cli
