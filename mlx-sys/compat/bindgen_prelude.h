// Prepended to bindgen's view of mlx-c on non-aarch64 targets so the generated Rust
// declares the same float16/bfloat16 items as the genuine crate's macOS bindings:
// `float16_t` as bindgen's 16-bit float wrapper and `bfloat16_t` as a plain u16.
#pragma once
#include <stdint.h>
typedef __fp16 float16_t;
typedef uint16_t bfloat16_t;
#define HAS_FLOAT16
#define HAS_BFLOAT16
