// The trainer's host-side random number generators, bit-compatible with the ones a Python training script
// seeds through `transformers.set_seed`: Python's `random` module (data order) and numpy's legacy global
// RandomState (input noise). Both are MT19937; they differ in seeding and in how they turn words into values.
// Their states convert to and from the tuples `random.getstate()` and `np.random.get_state()` return, which is
// what rng_state.pth holds under "python" and "numpy". Torch-free: the CLI and unit tests use it too.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <vector>

namespace ckpt::train {

class MT19937 {
 public:
  static constexpr int kWords = 624;
  std::array<std::uint32_t, kWords> key{};
  int pos = kWords;  // the next word to temper; kWords means "twist first"

  void init_genrand(std::uint32_t seed);
  void init_by_array(const std::vector<std::uint32_t>& init_key);
  std::uint32_t next();

 private:
  void twist();
};

// Python's random.Random (CPython 3, Modules/_randommodule.c).
class PythonRandom {
 public:
  // random.seed(n) for a non-negative int n.
  void seed(std::uint64_t n);
  // getrandbits(k) for 0 < k <= 32.
  std::uint32_t getrandbits(int k);
  // _randbelow(n) for 0 < n < 2**32.
  std::uint32_t randbelow(std::uint32_t n);
  // random.shuffle(x).
  template <typename T>
  void shuffle(std::vector<T>& x) {
    for (std::size_t i = x.size(); i-- > 1;) {
      const std::size_t j = randbelow(static_cast<std::uint32_t>(i + 1));
      std::swap(x[i], x[j]);
    }
  }

  // getstate() is (3, (key[0], ..., key[623], pos), gauss_next).
  MT19937 mt;
  std::optional<double> gauss_next;
};

// numpy.random's legacy global generator (RandomState: mt19937 seeding and legacy_gauss).
class NumpyRandom {
 public:
  // np.random.seed(n), 0 <= n < 2**32.
  void seed(std::uint32_t n);
  double random_double();
  double standard_normal();

  // get_state() is ('MT19937', key as uint32[624], pos, has_gauss, cached_gaussian).
  MT19937 mt;
  bool has_gauss = false;
  double gauss = 0.0;
};

}  // namespace ckpt::train
