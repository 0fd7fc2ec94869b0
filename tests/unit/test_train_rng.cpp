#include <doctest/doctest.h>

#include "train/rng.hpp"

using namespace ckpt::train;

// Expected values from /usr/bin/python3: random.seed(42); [random.getrandbits(32) for _ in range(3)] and
// np.random.seed(42); np.random.standard_normal(3).
TEST_CASE("rng: Python's random and numpy's legacy generator") {
  PythonRandom python;
  python.seed(42);
  CHECK(python.getrandbits(32) == 2746317213u);
  CHECK(python.getrandbits(32) == 478163327u);
  CHECK(python.getrandbits(32) == 107420369u);
  NumpyRandom numpy;
  numpy.seed(42);
  CHECK(numpy.standard_normal() == 0.4967141530112327);
  CHECK(numpy.standard_normal() == -0.13826430117118466);
  CHECK(numpy.standard_normal() == 0.6476885381006925);
}
