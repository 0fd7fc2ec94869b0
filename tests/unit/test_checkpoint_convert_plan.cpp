#include <doctest/doctest.h>

#include <map>
#include <string>
#include <vector>

#include "checkpoint/convert_plan.hpp"
#include "util/error.hpp"

using namespace ckpt;
using namespace ckpt::checkpoint::convert_detail;
using checkpoint::ConvertOptions;
using checkpoint::ConvertTarget;
using checkpoint::Source;

namespace {

// A state dict held in memory, as load_source would give it: name -> tensor, each on its own storage unless tied.
class StateDict {
 public:
  // A tensor of `shape` on a new storage.
  StateDict& add(const std::string& name, DType dtype, std::vector<std::int64_t> shape) {
    std::uint64_t numel = 1;
    for (auto d : shape) numel *= static_cast<std::uint64_t>(d);
    source_.own_graph.storages.push_back(
        {std::to_string(source_.own_graph.storages.size()), dtype, "cpu", numel, false});
    pickle::TensorRef t;
    t.storage = static_cast<std::uint32_t>(source_.own_graph.storages.size() - 1);
    t.dtype = dtype;
    t.shape = shape;
    t.stride = contiguous(shape);
    return entry(name, t);
  }
  // The very view `name` was given, under another name (a tied tensor).
  StateDict& tie(const std::string& name, const std::string& to) { return entry(name, views_.at(to)); }

  const Source& source() {
    pickle::Node root;
    root.kind = pickle::Kind::dict;
    root.items = items_;
    source_.own_graph.set_root(source_.own_graph.add(std::move(root)));
    return source_;
  }

 private:
  static std::vector<std::int64_t> contiguous(const std::vector<std::int64_t>& shape) {
    std::vector<std::int64_t> stride(shape.size(), 1);
    for (std::size_t d = shape.size(); d-- > 1;) stride[d - 1] = stride[d] * shape[d];
    return stride;
  }
  StateDict& entry(const std::string& name, const pickle::TensorRef& t) {
    views_[name] = t;
    pickle::Node key;
    key.kind = pickle::Kind::string;
    key.text = name;
    items_.push_back(source_.own_graph.add(std::move(key)));
    items_.push_back(source_.own_graph.add_tensor(t));
    return *this;
  }
  Source source_;
  std::map<std::string, pickle::TensorRef> views_;
  std::vector<pickle::NodeId> items_;
};

std::vector<std::string> names_of(const std::vector<Weight>& weights) {
  std::vector<std::string> names;
  for (const auto& w : weights) names.push_back(w.name);
  return names;
}

ConvertOptions options_with(std::optional<std::uint64_t> max_shard_size, std::optional<DType> dtype = std::nullopt) {
  ConvertOptions options;
  options.max_shard_size = max_shard_size;
  options.dtype = dtype;
  return options;
}

}  // namespace

TEST_CASE(
    "convert planning: weights in state-dict order, a tensor that is the same view as an earlier one tied to it") {
  StateDict dict;
  dict.add("embed.weight", DType::float32, {4})
      .add("layer.weight", DType::float32, {2, 2})
      .tie("lm_head.weight", "embed.weight")
      .add("step", DType::int64, {3});
  std::vector<Weight> weights;
  collect_weights(dict.source(), weights);
  CHECK(names_of(weights) == std::vector<std::string>{"embed.weight", "layer.weight", "lm_head.weight", "step"});
  CHECK_FALSE(weights[0].tied_to);
  CHECK_FALSE(weights[1].tied_to);
  CHECK(weights[2].tied_to == "embed.weight");
  CHECK_FALSE(weights[3].tied_to);
  CHECK(tensor_of(weights[1]).shape == std::vector<std::int64_t>{2, 2});
}

TEST_CASE("convert planning: what is not a state dict of tensors is refused, naming the file") {
  Source s;
  s.path = "optimizer.pt";
  pickle::Node root;
  root.kind = pickle::Kind::dict;
  pickle::Node key;
  key.kind = pickle::Kind::string;
  key.text = "lr";
  pickle::Node value;
  value.kind = pickle::Kind::floating;
  value.number = 0.1;
  root.items = {s.own_graph.add(key), s.own_graph.add(value)};
  s.own_graph.set_root(s.own_graph.add(std::move(root)));
  std::vector<Weight> weights;
  try {
    collect_weights(s, weights);
    FAIL("collect_weights accepted a dict of numbers");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::unsupported);
    CHECK(e.path() == "optimizer.pt");
  }
}

TEST_CASE("convert planning: --dtype casts floating tensors only, and only between dtypes the casts handle") {
  CHECK(output_dtype(DType::float32, options_with(std::nullopt, DType::bfloat16)) == DType::bfloat16);
  CHECK(output_dtype(DType::float16, options_with(std::nullopt, DType::float32)) == DType::float32);
  CHECK(output_dtype(DType::int64, options_with(std::nullopt, DType::float16)) == DType::int64);
  CHECK(output_dtype(DType::boolean, options_with(std::nullopt, DType::float16)) == DType::boolean);
  CHECK(output_dtype(DType::float32, options_with(std::nullopt)) == DType::float32);
  CHECK(output_dtype(DType::float8_e5m2, options_with(std::nullopt, DType::float16)) == DType::float8_e5m2);

  CHECK_NOTHROW(check_dtype_option(options_with(std::nullopt)));
  for (DType target : {DType::float32, DType::float16, DType::bfloat16})
    CHECK_NOTHROW(check_dtype_option(options_with(std::nullopt, target)));
  for (DType target : {DType::int64, DType::uint8, DType::boolean, DType::complex64, DType::float8_e4m3fn}) {
    CAPTURE(torch_name(target));
    try {
      check_dtype_option(options_with(std::nullopt, target));
      FAIL("check_dtype_option accepted the target");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::invalid_argument);
      CHECK(e.where() == "--dtype");
    }
  }
}

TEST_CASE("convert planning: the shard plan of --max-shard-size, tied tensors with their tie and counted once") {
  StateDict dict;
  // 16, 16, 24 bytes; the tie adds none.
  dict.add("a", DType::float32, {4}).add("b", DType::float32, {2, 2}).tie("c", "a").add("d", DType::int64, {3});
  std::vector<Weight> weights;
  collect_weights(dict.source(), weights);

  const WeightsPlan whole = plan_shards(weights, options_with(std::nullopt));
  CHECK(whole.shards == std::vector<std::vector<std::size_t>>{{0, 1, 2, 3}});
  CHECK(whole.total_size == 56);

  // Hugging Face's greedy rule: a shard is closed when the next tensor would take it past the limit; a tensor larger
  // than the limit has a shard of its own.
  const WeightsPlan sharded = plan_shards(weights, options_with(20));
  CHECK(sharded.shards == std::vector<std::vector<std::size_t>>{{0, 2}, {1}, {3}});
  CHECK(sharded.total_size == 56);
  CHECK(plan_shards(weights, options_with(32)).shards == std::vector<std::vector<std::size_t>>{{0, 1, 2}, {3}});
  CHECK(plan_shards(weights, options_with(1000)).shards == std::vector<std::vector<std::size_t>>{{0, 1, 2, 3}});

  // Sizes are those written: cast to float16 the floating tensors halve (8, 8, 24).
  const WeightsPlan cast = plan_shards(weights, options_with(20, DType::float16));
  CHECK(cast.total_size == 40);
  CHECK(cast.shards == std::vector<std::vector<std::size_t>>{{0, 1, 2}, {3}});
}

TEST_CASE("convert planning: output names of each target, single and sharded") {
  using checkpoint::WeightsFormat;
  CHECK(format_of(ConvertTarget::safetensors) == WeightsFormat::safetensors);
  CHECK(format_of(ConvertTarget::pytorch) == WeightsFormat::pytorch);
  CHECK(checkpoint::single_weights_name(format_of(ConvertTarget::safetensors)) == "model.safetensors");
  CHECK(checkpoint::single_weights_name(format_of(ConvertTarget::pytorch)) == "pytorch_model.bin");
  CHECK(checkpoint::shard_name(format_of(ConvertTarget::safetensors), 0, 3) == "model-00001-of-00003.safetensors");
  CHECK(checkpoint::shard_name(format_of(ConvertTarget::pytorch), 2, 3) == "pytorch_model-00003-of-00003.bin");
  CHECK(checkpoint::index_name(format_of(ConvertTarget::safetensors)) == "model.safetensors.index.json");
  CHECK(checkpoint::index_name(format_of(ConvertTarget::pytorch)) == "pytorch_model.bin.index.json");
}

TEST_CASE("convert planning: --include-state takes the files whose names promise training state") {
  for (const char* name : {"optimizer.pt", "optimizer_0.pt", "optimizer_12.pt", "scheduler.pt", "scaler.pt",
                           "rng_state.pth", "rng_state_3.pth"}) {
    CAPTURE(name);
    CHECK(is_state_file_name(name));
  }
  for (const char* name : {"pytorch_model.bin", "model.safetensors", "model-00001-of-00002.safetensors",
                           "adapter_model.bin", "config.json", "trainer_state.json", "training_args.bin",
                           "optimizer.safetensors", "optimizer.bin", "optimizer_x.pt", "rng_state.pt", "notes.pt"}) {
    CAPTURE(name);
    CHECK_FALSE(is_state_file_name(name));
  }
  CHECK(state_safetensors_name("optimizer.pt") == "optimizer.safetensors");
  CHECK(state_safetensors_name("rng_state_1.pth") == "rng_state_1.safetensors");
}

TEST_CASE(
    "convert planning: a state file stored as STEM.safetensors goes back to STEM and an extension torch files carry") {
  Source s;
  s.path = "out/rng_state.safetensors";
  CHECK(restored_state_name(s) == "rng_state.pt");  // no recorded name: .pt
  for (const char* recorded : {"rng_state.pth", "rng_state.pt", "rng_state.bin"}) {
    s.metadata[checkpoint::kSourceNameKey] = recorded;
    CHECK(restored_state_name(s) == recorded);
  }
  // The recorded name is the file's own data: it may not name another file, nor leave the directory.
  for (const char* recorded :
       {"optimizer.pt", "../rng_state.pth", "rng_state.py", "rng_state", "sub/rng_state.pth", ""}) {
    CAPTURE(recorded);
    s.metadata[checkpoint::kSourceNameKey] = recorded;
    try {
      restored_state_name(s);
      FAIL("restored_state_name accepted the recorded name");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::corrupt);
      CHECK(e.path() == "out/rng_state.safetensors");
      CHECK(e.where() == std::string("__metadata__ ") + checkpoint::kSourceNameKey);
    }
  }
}

TEST_CASE("convert planning: two inputs of a directory that would become one output are refused") {
  checkpoint::ConvertResult result;
  result.files.push_back({"in/a.bin", "out/a.safetensors", "converted", 0});
  result.files.push_back({"", "out/model.safetensors.index.json", "written", 0});

  CHECK_NOTHROW(claim_output(result, 0, "out/b.safetensors", "in/b.bin"));
  try {
    claim_output(result, 0, "out/a.safetensors", "in/a.safetensors");
    FAIL("claim_output accepted a second input for out/a.safetensors");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::unsupported);
    CHECK(e.path() == "in/a.safetensors");
    CHECK(e.detail().find("in/a.bin already became") != std::string::npos);
  }
  try {
    claim_output(result, 0, "out/model.safetensors.index.json", "in/model.safetensors.index.json");
    FAIL("claim_output accepted a second input for the index");
  } catch (const Error& e) {
    CHECK(e.detail().find("the weights index already became") != std::string::npos);
  }
  // Only what this conversion made counts: files before `first` are another conversion's.
  CHECK_NOTHROW(claim_output(result, 2, "out/a.safetensors", "in/a.safetensors"));
}
