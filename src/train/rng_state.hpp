// rng_state.pth as the Trainer writes it (_save_rng_state): a dict of
//   "python": random.getstate()      = (3, (625 ints: key[0..623], pos), None or gauss_next)
//   "numpy":  np.random.get_state()  = ('MT19937', uint32 array [624], pos, has_gauss, cached_gaussian)
//   "cpu":    torch.get_rng_state()  = a uint8 tensor (torch's CPUGeneratorImpl state)
// written with only the globals torch.load's safe loader and numpy's reconstructors need.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "checkpoint/source.hpp"
#include "train/rng.hpp"
#include "train/tensors.hpp"

namespace ckpt::train {

struct RngStates {
  PythonRandom python;
  NumpyRandom numpy;
  at::Tensor cpu;
};

// The torch default CPU generator's state (a copy) and setting it.
at::Tensor torch_rng_state();
void set_torch_rng_state(const at::Tensor& state);
// torch.manual_seed(seed) for the CPU generator.
void torch_manual_seed(std::uint64_t seed);

pickle::NodeId rng_state_dict(GraphMaker& out, const RngStates& states);
// Throws corrupt naming the file and the entry when it is not such a dict.
RngStates load_rng_states(const checkpoint::Source& source);

}  // namespace ckpt::train
