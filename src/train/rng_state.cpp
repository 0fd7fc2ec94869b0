#include "train/rng_state.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <cstring>
#include <mutex>

#include "util/error.hpp"

namespace ckpt::train {
using pickle::Kind;
using pickle::NodeId;

at::Tensor torch_rng_state() {
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get_state();
}

void set_torch_rng_state(const at::Tensor& state) {
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state);
}

void torch_manual_seed(std::uint64_t seed) {
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_current_seed(seed);
}

namespace {

// torch 1.13's CPUGeneratorImplState: a legacy THGeneratorState {u64 the_initial_seed; i32 left; i32 seeded;
// u64 next; u64 state[624]; ...} first. set_state accepts left in [1, 624] and next <= 624 separately, but its
// mt19937 then reads state[next] up to 624 - left more times: only left + next == 625 (after a draw) or
// (1, 0) (freshly seeded) keep those reads inside the array.
void check_torch_rng_state(const at::Tensor& state, const std::string& path) {
  const auto* bytes = state.data_ptr<std::uint8_t>();
  std::int32_t left = 0;
  std::int32_t seeded = 0;
  std::uint64_t next = 0;
  std::memcpy(&left, bytes + 8, 4);
  std::memcpy(&seeded, bytes + 12, 4);
  std::memcpy(&next, bytes + 16, 8);
  const bool drawn = left >= 1 && left <= 624 && next == static_cast<std::uint64_t>(625 - left);
  const bool fresh = left == 1 && next == 0;
  if (seeded != 1 || !(drawn || fresh))
    throw Error(ErrorKind::corrupt, path, "cpu", "not a valid torch generator state");
}

}  // namespace

NodeId rng_state_dict(GraphMaker& out, const RngStates& states) {
  std::vector<NodeId> words;
  for (std::uint32_t w : states.python.mt.key) words.push_back(out.integer(w));
  words.push_back(out.integer(states.python.mt.pos));
  const NodeId gauss_next = states.python.gauss_next ? out.number(*states.python.gauss_next) : out.none();
  const NodeId python = out.tuple({out.integer(3), out.tuple(std::move(words)), gauss_next});
  const NodeId numpy =
      out.tuple({out.text("MT19937"), out.uint32_array(states.numpy.mt.key), out.integer(states.numpy.mt.pos),
                 out.integer(states.numpy.has_gauss ? 1 : 0), out.number(states.numpy.gauss)});
  return out.dict({out.text("python"), python, out.text("numpy"), numpy, out.text("cpu"), out.tensor(states.cpu)});
}

RngStates load_rng_states(const checkpoint::Source& source) {
  const GraphReader in{source.graph(), source.path};
  const NodeId root = source.graph().root();
  RngStates states;

  const auto python = in.items(in.get(root, "python"), Kind::tuple, "python");
  if (python.size() != 3 || in.integer(python[0], "python") != 3) in.bad("python");
  const auto words = in.items(python[1], Kind::tuple, "python");
  if (words.size() != MT19937::kWords + 1) in.bad("python");
  for (int i = 0; i < MT19937::kWords; ++i) {
    const std::int64_t w = in.integer(words[static_cast<std::size_t>(i)], "python");
    if (w < 0 || w > 0xffffffffLL) in.bad("python");
    states.python.mt.key[static_cast<std::size_t>(i)] = static_cast<std::uint32_t>(w);
  }
  const std::int64_t pos = in.integer(words.back(), "python");
  if (pos < 0 || pos > MT19937::kWords) in.bad("python");
  states.python.mt.pos = static_cast<int>(pos);
  if (!source.graph().is(python[2], Kind::none)) states.python.gauss_next = in.number(python[2], "python");

  const auto numpy = in.items(in.get(root, "numpy"), Kind::tuple, "numpy");
  if (numpy.size() != 5 || in.expect(numpy[0], Kind::string, "numpy").text != "MT19937") in.bad("numpy");
  const auto& array =
      source.graph().arrays[static_cast<std::size_t>(in.expect(numpy[1], Kind::ndarray, "numpy").integer)];
  if ((array.descr != "<u4" && array.descr != "=u4") || array.data.size() != MT19937::kWords * 4) in.bad("numpy");
  for (std::size_t i = 0; i < MT19937::kWords; ++i) {
    std::uint32_t w = 0;
    for (int b = 0; b < 4; ++b)
      w |= static_cast<std::uint32_t>(static_cast<unsigned char>(array.data[i * 4 + b])) << (8 * b);
    states.numpy.mt.key[i] = w;
  }
  const std::int64_t numpy_pos = in.integer(numpy[2], "numpy");
  if (numpy_pos < 0 || numpy_pos > MT19937::kWords) in.bad("numpy");
  states.numpy.mt.pos = static_cast<int>(numpy_pos);
  states.numpy.has_gauss = in.integer(numpy[3], "numpy") != 0;
  states.numpy.gauss = in.number(numpy[4], "numpy");

  const NodeId cpu = in.get(root, "cpu");
  in.expect(cpu, Kind::tensor, "cpu");
  DirectReader reader(source.file().file());
  states.cpu = read_tensor_as(source, reader, cpu, {torch_rng_state().numel()}, at::kByte, "cpu");
  check_torch_rng_state(states.cpu, source.path);
  return states;
}

}  // namespace ckpt::train
