// Forced into the C++17 fuzz target (safetensors_fuzz, see fuzz/CMakeLists.txt): the
// one C++20 name common/nn/safetensors.cc uses, std::endian, which libstdc++'s <bit>
// defines only in C++20 mode.
#ifndef PMDRL_FUZZ_CXX17_SHIM_H_
#define PMDRL_FUZZ_CXX17_SHIM_H_

#include <bit>

#if __cplusplus < 202002L
namespace std {
enum class endian {
  little = __ORDER_LITTLE_ENDIAN__,
  big = __ORDER_BIG_ENDIAN__,
  native = __BYTE_ORDER__
};
}  // namespace std
#endif

#endif  // PMDRL_FUZZ_CXX17_SHIM_H_
