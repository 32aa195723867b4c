// Force-included (`-include`) into every mlx-c translation unit by build.rs.
// Each fix switches itself off where it is not needed.
#pragma once
#ifdef __cplusplus

// 1. mlx-c's private/io.h calls std::format without including <format>, and GCC 12's
//    libstdc++ has no <format> at all. Include it when it exists; otherwise provide a
//    minimal std::format that substitutes each "{}" with the next argument, which is the
//    only form mlx-c uses.
#if __has_include(<format>)
#include <format>
#endif
#if !defined(__cpp_lib_format)
#include <sstream>
#include <string>
#include <string_view>
namespace std {
namespace mlx_sys_compat {
inline void format_into(ostringstream& out, string_view fmt) {
  out << fmt;
}
template <class T, class... Rest>
void format_into(ostringstream& out, string_view fmt, const T& first, const Rest&... rest) {
  const size_t at = fmt.find("{}");
  if (at == string_view::npos) {
    out << fmt;
    return;
  }
  out << fmt.substr(0, at) << first;
  format_into(out, fmt.substr(at + 2), rest...);
}
} // namespace mlx_sys_compat
template <class... Args>
string format(string_view fmt, const Args&... args) {
  ostringstream out;
  mlx_sys_compat::format_into(out, fmt, args...);
  return out.str();
}
} // namespace std
#endif

// 2. mlx/c/half.h declares float16_t/bfloat16_t (and with them the four
//    mlx_array_{item,data}_{float16,bfloat16} functions mlx-rs calls) only on aarch64.
//    Elsewhere map both names to MLX's own 16-bit types, which have the same size and
//    bit layout as the Rust side's u16-based representations.
#if !defined(__aarch64__)
#include "mlx/types/half_types.h"
typedef mlx::core::float16_t float16_t;
typedef mlx::core::bfloat16_t bfloat16_t;
#define HAS_FLOAT16
#define HAS_BFLOAT16
#endif

#endif // __cplusplus
