//! Builds mlx-c against a prebuilt MLX and generates its Rust bindings.
//!
//! The genuine `mlx-sys 0.7.0` build script only works on macOS and clones MLX from
//! GitHub. This one:
//! 1. finds MLX from the official PyPI wheel (`MLX_PREFIX`, else Python's `mlx` package)
//!    and insists on exactly the version mlx-c 0.7.0 targets;
//! 2. finds the mlx-c sources inside the genuine crate as Cargo unpacked it
//!    (`MLX_C_SRC_DIR`, else the local registry, else `cargo metadata` downloads it);
//! 3. compiles only mlx-c (static) with CMake, with a force-included compatibility header
//!    on non-Apple targets;
//! 4. runs bindgen with the genuine crate's header set and options, so mlx-rs compiles
//!    against the output unchanged;
//! 5. publishes `DEP_MLX_LIBDIR` / `DEP_MLX_INCLUDE` / `DEP_MLX_VERSION` so the final
//!    binary can set its rpath (rpath does not propagate from a dependency).

use std::env;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The MLX release mlx-c 0.7.0 was written for. From 0.32.3 on, `gather_qmm` gained a
/// parameter and mlx-c no longer compiles, so the match is exact.
const MLX_VERSION: (u32, u32, u32) = (0, 32, 2);
/// The crates.io package whose `src/mlx-c` holds the C API sources.
const MLX_C_CRATE: &str = "mlx-sys-0.7.0";

const SETUP_HINT: &str = "Run `make setup` (scripts/setup.sh) in the repository root: it \
installs the MLX wheel into .deps/ and the build finds it there. To use another MLX, set \
MLX_PREFIX to the `mlx` directory of an unpacked wheel (the one holding lib/ and include/): \
mlx-cpu==0.32.2 on Linux, mlx-metal==0.32.2 on macOS, mlx-cuda-13==0.32.2 with an NVIDIA GPU.";

fn fail(message: String) -> ! {
    panic!("\n\nmlx-sys: {message}\n\n");
}

/// An MLX installation: the wheel's `mlx/` directory.
struct Mlx {
    include: PathBuf,
    libdir: PathBuf,
    library: PathBuf,
}

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=compat");
    println!("cargo::rerun-if-env-changed=MLX_PREFIX");
    println!("cargo::rerun-if-env-changed=MLX_C_SRC_DIR");
    println!("cargo::rerun-if-env-changed=PYTHON");
    println!("cargo::rerun-if-env-changed=MACOSX_DEPLOYMENT_TARGET");

    let target_vendor = env::var("CARGO_CFG_TARGET_VENDOR").unwrap_or_default();
    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let apple = target_vendor == "apple";
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));

    let mlx = find_mlx(apple);
    println!("cargo::rerun-if-changed={}", mlx.library.display());
    println!(
        "cargo::rerun-if-changed={}",
        mlx.include.join("mlx/version.h").display()
    );
    check_version(&mlx);
    check_backend(&mlx);
    if apple {
        check_deployment_target(&mlx);
    }

    let mlx_c = find_mlx_c_sources(&out_dir);
    // half types and <format> are only missing off aarch64 / with older libstdc++.
    let needs_compat = !apple && target_arch != "aarch64";

    let mlxc_lib_dir = build_mlx_c(&mlx, &mlx_c, &out_dir, &manifest_dir, needs_compat);

    println!("cargo::rustc-link-search=native={}", mlxc_lib_dir.display());
    println!("cargo::rustc-link-lib=static=mlxc");
    println!("cargo::rustc-link-search=native={}", mlx.libdir.display());
    println!("cargo::rustc-link-lib=dylib=mlx");
    // This crate's own test binary (bindgen's layout tests) links libmlx too, and rpath set
    // here reaches only this package's binaries: Apple's linker records every `-l` dylib
    // (there is no `--as-needed`), so without it dyld would abort that binary on macOS.
    // Dependents' binaries get theirs from the main package's build.rs.
    println!("cargo::rustc-link-arg=-Wl,-rpath,{}", mlx.libdir.display());
    // libmlx is built against libstdc++ (new string ABI) on Linux and libc++ on Apple.
    println!(
        "cargo::rustc-link-lib=dylib={}",
        if apple { "c++" } else { "stdc++" }
    );

    let include = env::join_paths([mlx_c.clone(), mlx.include.clone()])
        .unwrap_or_else(|e| fail(format!("cannot join include paths: {e}")));
    println!("cargo::metadata=include={}", include.to_string_lossy());
    println!("cargo::metadata=libdir={}", mlx.libdir.display());
    let (major, minor, patch) = MLX_VERSION;
    println!("cargo::metadata=version={major}.{minor}.{patch}");

    generate_bindings(&mlx_c, &out_dir, &manifest_dir, needs_compat, apple);
}

/// MLX_PREFIX wins; otherwise ask Python where its `mlx` package lives.
fn find_mlx(apple: bool) -> Mlx {
    let prefix = match env::var_os("MLX_PREFIX") {
        Some(prefix) => PathBuf::from(prefix),
        None => python_mlx_prefix().unwrap_or_else(|| {
            fail(format!(
                "MLX {} was not found: MLX_PREFIX is not set and Python has no `mlx` package.\n{SETUP_HINT}",
                version_string()
            ))
        }),
    };
    let library = prefix
        .join("lib")
        .join(if apple { "libmlx.dylib" } else { "libmlx.so" });
    let include = prefix.join("include");
    if !library.is_file() || !include.join("mlx/version.h").is_file() {
        fail(format!(
            "{} does not hold an MLX SDK (expected {} and {}).\n{SETUP_HINT}",
            prefix.display(),
            library.display(),
            include.join("mlx/version.h").display()
        ));
    }
    Mlx {
        libdir: prefix.join("lib"),
        include,
        library,
    }
}

fn python_mlx_prefix() -> Option<PathBuf> {
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let output = Command::new(python)
        .args([
            "-c",
            "import importlib.util as u; s = u.find_spec('mlx'); \
             print(list(s.submodule_search_locations)[0] if s else '')",
        ])
        .output()
        .ok()?;
    let path = String::from_utf8(output.stdout).ok()?;
    let path = path.trim();
    (output.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
}

fn version_string() -> String {
    let (major, minor, patch) = MLX_VERSION;
    format!("{major}.{minor}.{patch}")
}

fn check_version(mlx: &Mlx) {
    let header = mlx.include.join("mlx/version.h");
    let text = fs::read_to_string(&header)
        .unwrap_or_else(|e| fail(format!("cannot read {}: {e}", header.display())));
    let field = |name: &str| -> Option<u32> {
        text.lines().find_map(|line| {
            let rest = line.trim().strip_prefix("#define")?.trim();
            let value = rest.strip_prefix(name)?;
            value.trim().parse().ok()
        })
    };
    let found = (
        field("MLX_VERSION_MAJOR"),
        field("MLX_VERSION_MINOR"),
        field("MLX_VERSION_PATCH"),
    );
    let (Some(major), Some(minor), Some(patch)) = found else {
        fail(format!(
            "{} has no MLX_VERSION_MAJOR/MINOR/PATCH defines",
            header.display()
        ));
    };
    if (major, minor, patch) != MLX_VERSION {
        fail(format!(
            "found MLX {major}.{minor}.{patch} at {}, but mlx-rs 0.33 (mlx-c 0.7.0) needs exactly MLX {}: \
             mlx-c does not compile against other releases.\n{SETUP_HINT}",
            header.display(),
            version_string()
        ));
    }
}

/// mlx-rs forwards its `metal` feature here; a CPU-only wheel cannot honour it.
fn check_backend(mlx: &Mlx) {
    if env::var_os("CARGO_FEATURE_METAL").is_some() && !mlx.libdir.join("mlx.metallib").is_file() {
        fail(format!(
            "the `metal` feature is enabled but the MLX at {} has no mlx.metallib: install \
             mlx-metal=={} (macOS on Apple Silicon) or build without the feature.",
            mlx.libdir.display(),
            version_string()
        ));
    }
}

/// The macOS rustc and the C++ compiler build for when `MACOSX_DEPLOYMENT_TARGET` is unset.
const DEFAULT_MACOS_TARGET: (u32, u32) = (11, 0);

/// Refuses a deployment target below the one libmlx.dylib declares (14.0 for the 0.32.2
/// wheels). Linking against a newer dylib only warns, and the binary would then fail to load
/// on the older macOS it claims to support; mlx-c itself needs macOS 13.3's libc++ for
/// `std::format`. The workspace's `.cargo/config.toml` sets 14.0.
fn check_deployment_target(mlx: &Mlx) {
    let requested = match env::var("MACOSX_DEPLOYMENT_TARGET") {
        Ok(value) => parse_macos_version(&value).unwrap_or_else(|| {
            fail(format!(
                "MACOSX_DEPLOYMENT_TARGET={value} is not a macOS version such as 14.0"
            ))
        }),
        Err(_) => DEFAULT_MACOS_TARGET,
    };
    // The header and load commands come first; a few KiB in practice.
    let mut bytes = Vec::new();
    fs::File::open(&mlx.library)
        .and_then(|file| file.take(1 << 20).read_to_end(&mut bytes))
        .unwrap_or_else(|e| fail(format!("cannot read {}: {e}", mlx.library.display())));
    let Some(required) = macho_min_macos(&bytes) else {
        fail(format!(
            "{} is not a 64-bit Mach-O library with a minimum macOS version; is it the \
             mlx-metal=={} wheel's?\n{SETUP_HINT}",
            mlx.library.display(),
            version_string()
        ));
    };
    if requested < required {
        let (major, minor) = requested;
        let (need_major, need_minor) = required;
        fail(format!(
            "building for macOS {major}.{minor}, but {} needs macOS {need_major}.{need_minor}: \
             set MACOSX_DEPLOYMENT_TARGET={need_major}.{need_minor} (the repository's \
             .cargo/config.toml does, unless the environment overrides it)",
            mlx.library.display()
        ));
    }
}

fn parse_macos_version(value: &str) -> Option<(u32, u32)> {
    let mut parts = value.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |minor| minor.parse().ok())?;
    Some((major, minor))
}

/// The minimum macOS of a 64-bit little-endian Mach-O image: `LC_BUILD_VERSION`'s `minos`
/// (current linkers), else `LC_VERSION_MIN_MACOSX`'s `version` (older ones). Both encode
/// the version as `xxxx.yy.zz` nibbles in one u32.
fn macho_min_macos(bytes: &[u8]) -> Option<(u32, u32)> {
    const MH_MAGIC_64: u32 = 0xfeed_facf;
    const LC_VERSION_MIN_MACOSX: u32 = 0x24;
    const LC_BUILD_VERSION: u32 = 0x32;
    const PLATFORM_MACOS: u32 = 1;
    let word = |at: usize| -> Option<u32> {
        let field = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(field.try_into().ok()?))
    };
    if word(0)? != MH_MAGIC_64 {
        return None;
    }
    let commands = word(16)?;
    let mut at = 32; // sizeof(mach_header_64)
    for _ in 0..commands {
        let (cmd, size) = (word(at)?, word(at + 4)? as usize);
        let version = match cmd {
            LC_BUILD_VERSION if word(at + 8)? == PLATFORM_MACOS => Some(word(at + 12)?),
            LC_VERSION_MIN_MACOSX => Some(word(at + 8)?),
            _ => None,
        };
        if let Some(version) = version {
            return Some((version >> 16, (version >> 8) & 0xff));
        }
        if size < 8 {
            return None;
        }
        at = at.checked_add(size)?;
    }
    None
}

fn is_mlx_c_root(dir: &Path) -> bool {
    dir.join("CMakeLists.txt").is_file() && dir.join("mlx/c/mlx.h").is_file()
}

/// The mlx-c sources ship in the crates.io `mlx-sys 0.7.0` package. Because the workspace
/// patches that package, Cargo never downloads it for us; we look for Cargo's unpacked
/// copy and, failing that, have Cargo fetch it through a throwaway manifest.
fn find_mlx_c_sources(out_dir: &Path) -> PathBuf {
    if let Some(dir) = env::var_os("MLX_C_SRC_DIR") {
        let dir = PathBuf::from(dir);
        if !is_mlx_c_root(&dir) {
            fail(format!(
                "MLX_C_SRC_DIR={} is not an mlx-c source tree (no CMakeLists.txt and mlx/c/mlx.h)",
                dir.display()
            ));
        }
        return dir;
    }
    if let Some(dir) = registry_mlx_c() {
        return dir;
    }
    fetch_mlx_c(out_dir);
    registry_mlx_c().unwrap_or_else(|| {
        fail(format!(
            "Cargo fetched {MLX_C_CRATE} but its sources were not found under {}/registry/src; \
             set MLX_C_SRC_DIR to the `src/mlx-c` directory of an unpacked {MLX_C_CRATE} crate.",
            cargo_home().display()
        ))
    })
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
}

fn registry_mlx_c() -> Option<PathBuf> {
    let registries = fs::read_dir(cargo_home().join("registry/src")).ok()?;
    let mut candidates: Vec<PathBuf> = registries
        .filter_map(Result::ok)
        .map(|entry| entry.path().join(MLX_C_CRATE))
        .filter(|krate| {
            krate.join(".cargo-ok").is_file() && is_mlx_c_root(&krate.join("src/mlx-c"))
        })
        .map(|krate| krate.join("src/mlx-c"))
        .collect();
    candidates.sort();
    candidates.into_iter().next()
}

fn fetch_mlx_c(out_dir: &Path) {
    let dir = out_dir.join("fetch-mlx-c");
    let src = dir.join("src");
    fs::create_dir_all(&src)
        .unwrap_or_else(|e| fail(format!("cannot create {}: {e}", src.display())));
    let manifest = dir.join("Cargo.toml");
    let written = fs::write(
        &manifest,
        "[package]\nname = \"fetch-mlx-c\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
         [workspace]\n\n[dependencies]\nmlx-sys = { version = \"=0.7.0\", default-features = false }\n",
    )
    .and_then(|()| fs::write(src.join("lib.rs"), ""));
    if let Err(e) = written {
        fail(format!("cannot write {}: {e}", manifest.display()));
    }
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .stdout(std::process::Stdio::null())
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => fail(format!(
            "`cargo metadata` could not fetch {MLX_C_CRATE} from crates.io ({status}); check \
             network access to the registry or set MLX_C_SRC_DIR to an unpacked copy's src/mlx-c"
        )),
        Err(e) => fail(format!("cannot run cargo to fetch {MLX_C_CRATE}: {e}")),
    }
}

/// Writes a minimal `MLXConfig.cmake`: the wheel's own config drags in CUDA/cuDNN lookups
/// for the CUDA wheel and absolute paths from the wheel's build machine.
fn write_mlx_cmake_config(mlx: &Mlx, out_dir: &Path) -> PathBuf {
    let dir = out_dir.join("mlx-cmake");
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| fail(format!("cannot create {}: {e}", dir.display())));
    let config = format!(
        "if(NOT TARGET mlx)\n\
         \x20 add_library(mlx SHARED IMPORTED)\n\
         \x20 set_target_properties(mlx PROPERTIES\n\
         \x20   IMPORTED_LOCATION \"{lib}\"\n\
         \x20   INTERFACE_INCLUDE_DIRECTORIES \"{include}\")\n\
         endif()\n\
         set(MLX_FOUND TRUE)\n\
         set(MLX_INCLUDE_DIRS \"{include}\")\n\
         set(MLX_LIBRARIES mlx)\n",
        lib = cmake_path(&mlx.library),
        include = cmake_path(&mlx.include),
    );
    let file = dir.join("MLXConfig.cmake");
    fs::write(&file, config)
        .unwrap_or_else(|e| fail(format!("cannot write {}: {e}", file.display())));
    dir
}

fn cmake_path(path: &Path) -> String {
    path.to_string_lossy().replace('\\', "/")
}

/// Compiles the `mlxc` static library and returns the directory holding it.
fn build_mlx_c(
    mlx: &Mlx,
    mlx_c: &Path,
    out_dir: &Path,
    manifest_dir: &Path,
    needs_compat: bool,
) -> PathBuf {
    let mlx_cmake = write_mlx_cmake_config(mlx, out_dir);
    let mut config = cmake::Config::new(mlx_c);
    config
        .define("MLX_C_USE_SYSTEM_MLX", "ON")
        .define("MLX_C_BUILD_EXAMPLES", "OFF")
        .define("BUILD_SHARED_LIBS", "OFF")
        .define("MLX_DIR", &mlx_cmake)
        // mlx-c is a thin C wrapper: an optimised build costs little and nobody steps
        // through it, so every Cargo profile uses the same Release build.
        .profile("Release")
        .build_target("mlxc");
    if needs_compat {
        // The header includes MLX's half types, so MLX's include dir must be on the path
        // even for CMake's compiler probe, which does not see target include dirs.
        let header = manifest_dir.join("compat/mlxc_compat.h");
        config.cxxflag(format!(
            "-I{} -include {}",
            mlx.include.display(),
            header.display()
        ));
    }
    let dst = config.build();
    dst.join("build")
}

fn generate_bindings(
    mlx_c: &Path,
    out_dir: &Path,
    manifest_dir: &Path,
    needs_compat: bool,
    apple: bool,
) {
    let header_dir = mlx_c.join("mlx/c");
    let mut headers: Vec<PathBuf> = fs::read_dir(&header_dir)
        .unwrap_or_else(|e| fail(format!("cannot list {}: {e}", header_dir.display())))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "h"))
        .collect();
    headers.sort();

    let mut builder = bindgen::Builder::default()
        .rust_target(
            "1.73.0"
                .parse()
                .unwrap_or_else(|e| fail(format!("bad bindgen rust target: {e}"))),
        )
        .clang_arg(format!("-I{}", mlx_c.display()))
        .blocklist_function("malloc")
        .blocklist_function("realloc")
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    if needs_compat {
        let prelude = manifest_dir.join("compat/bindgen_prelude.h");
        builder = builder
            .clang_arg("-include")
            .clang_arg(prelude.to_string_lossy());
    }
    for header in &headers {
        builder = builder.header(header.to_string_lossy());
    }
    let bindings = builder.generate().unwrap_or_else(|e| {
        let libclang = if apple {
            "it comes with the Xcode command line tools (xcode-select --install); if it is \
             still not found, set LIBCLANG_PATH=\"$(xcode-select -p)/usr/lib\""
        } else {
            "install libclang-dev (apt-get install libclang-dev), or run `make setup`"
        };
        fail(format!(
            "bindgen failed on the mlx-c headers in {}: {e} (bindgen needs libclang: {libclang})",
            header_dir.display()
        ))
    });
    let file = out_dir.join("bindings.rs");
    bindings
        .write_to_file(&file)
        .unwrap_or_else(|e| fail(format!("cannot write {}: {e}", file.display())));
}
