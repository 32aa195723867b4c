#!/usr/bin/env bash
# Checks the macOS (Apple Silicon) build from Linux, as far as Linux can: no Mac, no Apple
# SDK, no Apple linker. See docs/mlx-runtime.md, "macOS".
#
#   0. mlx-sys's own test binary carries the rpath to the wheel's lib/ (here, on Linux):
#      on macOS it records libmlx.dylib whether it uses it or not, and dyld needs the rpath;
#   1. mlx-sys's build script, run for aarch64-apple-darwin against the real mlx-metal
#      wheel's libmlx.dylib: it refuses MACOSX_DEPLOYMENT_TARGET=13.0 and accepts the 14.0
#      that .cargo/config.toml pins (it then stops where it would compile mlx-c, which needs
#      Apple's SDK);
#   2. the main package's build script for that target: the rpath to the wheel's lib/ and
#      none of the Linux-only link arguments (OpenBLAS, the exported cblas_sgemm);
#   3. `cargo clippy --all-targets -D warnings` of the whole workspace for that target, with
#      mlx-sys's bindings taken from this machine's build (same C API) and ring's few C
#      headers stubbed, so every `cfg(target_os)` path compiles and lints clean for macOS.
#
# Needs: rustup (adds the aarch64-apple-darwin standard library), clang (apt-get install
# clang), pip, and a finished Linux build (`make build`) for the bindings.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGET=aarch64-apple-darwin
WORK=target/macos-check
WHEEL_DIR=$WORK/mlx-metal
PYTHON=${PYTHON:-python3}
die() { printf 'check_macos_target: ERROR: %s\n' "$*" >&2; exit 1; }
step() { printf '\n==> %s\n' "$*"; }

command -v clang >/dev/null 2>&1 || die "clang is missing: apt-get install clang"
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
bindings=$(ls -t target/release/build/mlx-sys-*/out/bindings.rs 2>/dev/null | head -n 1 || true)
[ -n "$bindings" ] || die "no mlx-sys bindings from a Linux build: run make build first"

if [ ! -f "$WHEEL_DIR/mlx/lib/libmlx.dylib" ]; then
  step "downloading mlx-metal==0.32.2 for macosx_14_0_arm64"
  rm -rf "$WHEEL_DIR" && mkdir -p "$WHEEL_DIR"
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --no-deps \
    --platform macosx_14_0_arm64 --python-version 3.11 -d "$WORK/wheels" mlx-metal==0.32.2
  "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
    "$(ls "$WORK"/wheels/mlx_metal-0.32.2-*.whl)" "$WHEEL_DIR"
fi
WHEEL_MLX=$(cd "$WHEEL_DIR/mlx" && pwd)

step "0. mlx-sys's test binary has the rpath (this machine's build)"
test_binary=$(cargo test --release -p mlx-sys --no-run --message-format=json 2>/dev/null \
  | "$PYTHON" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "mlx_sys":
        print(m["executable"])')
[ -n "$test_binary" ] || die "cargo built no mlx-sys test binary"
readelf -d "$test_binary" | grep -q "R\(UN\)\?PATH.*mlx-wheel/mlx/lib" \
  || die "$test_binary has no rpath to the MLX wheel: $(readelf -d "$test_binary" | grep -i path)"
echo "$(basename "$test_binary"): $(readelf -d "$test_binary" | grep -o 'runpath: .*')"

export CARGO_TARGET_DIR=$PWD/$WORK/target

step "1. mlx-sys refuses a deployment target below libmlx.dylib's"
if out=$(MACOSX_DEPLOYMENT_TARGET=13.0 MLX_PREFIX=$WHEEL_MLX \
    cargo check --release --target "$TARGET" -p mlx-sys 2>&1); then
  die "mlx-sys built for macOS 13.0 against a libmlx.dylib that needs 14.0"
fi
grep -q "building for macOS 13.0, but .*libmlx.dylib needs macOS 14.0" <<<"$out" \
  || die "mlx-sys failed for another reason: $out"
echo "refused 13.0: ok"
out=$(MLX_PREFIX=$WHEEL_MLX cargo check --release --target "$TARGET" -p mlx-sys 2>&1 || true)
grep -q "needs macOS 14.0" <<<"$out" && die "mlx-sys refused the pinned 14.0: $out"
grep -q -- "-mmacosx-version-min=14.0" <<<"$out" \
  || die "mlx-c was not configured for macOS 14.0: $out"
echo "accepted 14.0 and configured mlx-c with -mmacosx-version-min=14.0: ok"

step "2 and 3. the workspace for $TARGET: build scripts, clippy"
stub=$PWD/$WORK/c-stubs
mkdir -p "$stub" "$WORK/bindings"
cp "$bindings" "$WORK/bindings/bindings.rs"
printf '#define TARGET_OS_OSX 1\n#define TARGET_OS_IPHONE 0\n' > "$stub/TargetConditionals.h"
printf '#define assert(x) ((void)0)\n' > "$stub/assert.h"
printf '#include <stddef.h>\nvoid *memcpy(void *, const void *, size_t);\nvoid *memset(void *, int, size_t);\nint memcmp(const void *, const void *, size_t);\n' \
  > "$stub/string.h"
cat > "$WORK/mlx-override.toml" <<EOF
[target.$TARGET.mlx]
rustc-link-lib = ["mlx"]
rustc-link-search = ["$WHEEL_MLX/lib"]
libdir = "$WHEEL_MLX/lib"
rustc-env = { OUT_DIR = "$PWD/$WORK/bindings" }
EOF
CC_aarch64_apple_darwin=clang \
  CFLAGS_aarch64_apple_darwin="-ffreestanding -nostdlibinc -I$stub" \
  cargo clippy --release --target "$TARGET" --workspace --all-targets \
  --config "$WORK/mlx-override.toml" -- -D warnings
output=$(ls -t "$CARGO_TARGET_DIR/$TARGET"/release/build/mlx-serve-*/output | head -n 1)
grep -qx "cargo::rustc-link-arg=-Wl,-rpath,$WHEEL_MLX/lib" "$output" \
  || die "the main build script gave no rpath to $WHEEL_MLX/lib: $(cat "$output")"
if grep -q "openblas\|cblas_sgemm" "$output"; then
  die "Linux-only link arguments for $TARGET: $(cat "$output")"
fi
echo "main build script for $TARGET:"
sed 's/^/  /' "$output"
echo "macOS target checks passed"
