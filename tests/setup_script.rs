//! `scripts/setup.sh`'s macOS checks, run here on Linux with the commands they ask
//! (`uname`, `sysctl`, `sw_vers`, `xcode-select`, `c++`, `brew`, Python's
//! `platform.machine()`) answered by small shell stand-ins: an Intel Mac, a Rosetta shell or
//! Python, macOS 13, missing or old Xcode tools, and cmake/promtool missing with and
//! without Homebrew each stop the set-up with what to do, before it downloads anything. No
//! Mac is needed to see those messages.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch folder of stand-in commands, plus one of links to every real command except
/// the ones a case wants missing.
struct FakeMac {
    root: PathBuf,
}

impl FakeMac {
    fn new(name: &str, hidden: &[&str]) -> FakeMac {
        let root =
            std::env::temp_dir().join(format!("mlx-serve-setup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let shims = root.join("shims");
        let system = root.join("system");
        std::fs::create_dir_all(&shims).expect("shims dir");
        std::fs::create_dir_all(&system).expect("system dir");
        let script = |name: &str, body: &str| {
            let path = shims.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write shim");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .expect("chmod shim");
        };
        script(
            "uname",
            r#"case "$1" in -s) echo Darwin;; -m) echo "$FAKE_ARCH";; *) exec /bin/uname "$@";; esac"#,
        );
        script(
            "sysctl",
            r#"case "$2" in sysctl.proc_translated) echo "$FAKE_TRANSLATED";; hw.optional.arm64) echo "$FAKE_ARM64_CPU";; esac"#,
        );
        script("sw_vers", r#"echo "$FAKE_MACOS""#);
        script(
            "xcode-select",
            r#"[ "$FAKE_XCODE" = 1 ] || exit 2; echo /Library/Developer/CommandLineTools"#,
        );
        script(
            "c++",
            r#"[ "$1" = --version ] && { echo "Apple clang version 14.0.3"; exit 0; }; [ "$FAKE_CXX20" = 1 ]"#,
        );
        script(
            "python",
            r#"case "$2" in *platform.machine*) echo "$FAKE_PYTHON_ARCH"; exit 0;; esac; exec python3 "$@""#,
        );
        if !hidden.contains(&"brew") {
            script("brew", r#"echo "$@" >> "$FAKE_BREW_LOG"; exit 1"#);
        }
        // Every other command from the real PATH, minus the hidden ones.
        let path = std::env::var_os("PATH").expect("PATH");
        for dir in std::env::split_paths(&path) {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let name = entry.file_name();
                let link = system.join(&name);
                if hidden.iter().any(|h| name == *h) || shims.join(&name).exists() || link.exists()
                {
                    continue;
                }
                let _ = std::os::unix::fs::symlink(entry.path(), link);
            }
        }
        FakeMac { root }
    }

    /// Runs the set-up with `vars` (over the defaults of a working Apple Silicon Mac) and
    /// returns its exit code and standard error.
    fn setup(&self, vars: &[(&str, &str)]) -> (Option<i32>, String) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup.sh");
        let mut command = Command::new("/bin/bash");
        command
            .arg(script)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.root.join("shims").display(),
                    self.root.join("system").display()
                ),
            )
            .env("PYTHON", self.root.join("shims/python"))
            .env("FAKE_BREW_LOG", self.brew_log());
        for (name, value) in [
            ("FAKE_ARCH", "arm64"),
            ("FAKE_MACOS", "14.6.1"),
            ("FAKE_TRANSLATED", "0"),
            ("FAKE_ARM64_CPU", "1"),
            ("FAKE_XCODE", "1"),
            ("FAKE_CXX20", "1"),
            ("FAKE_PYTHON_ARCH", "arm64"),
        ]
        .into_iter()
        .chain(vars.iter().copied())
        {
            command.env(name, value);
        }
        let output = command.output().expect("run setup.sh");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn brew_log(&self) -> PathBuf {
        self.root.join("brew.log")
    }
}

impl Drop for FakeMac {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Asserts the set-up stopped (exit 1) with a last line, its error, containing every one
/// of `expected`.
fn assert_stops(result: (Option<i32>, String), expected: &[&str]) {
    let (code, stderr) = result;
    assert_eq!(code, Some(1), "{stderr}");
    let error = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(error.starts_with("setup: ERROR: "), "{stderr}");
    for text in expected {
        assert!(error.contains(text), "expected {text:?} in: {stderr}");
    }
}

#[test]
fn intel_macs_and_rosetta_are_refused_with_what_to_do() {
    let mac = FakeMac::new("arch", &[]);
    assert_stops(
        mac.setup(&[("FAKE_ARCH", "x86_64"), ("FAKE_ARM64_CPU", "0")]),
        &["needs Apple Silicon (arm64)", "not x86_64"],
    );
    assert_stops(
        mac.setup(&[("FAKE_ARCH", "x86_64")]),
        &["runs under Rosetta", "arch -arm64"],
    );
    assert_stops(
        mac.setup(&[("FAKE_TRANSLATED", "1")]),
        &["runs under Rosetta"],
    );
    assert_stops(
        mac.setup(&[("FAKE_PYTHON_ARCH", "x86_64")]),
        &[
            "is an x86_64 build (Rosetta)",
            "mlx-metal has none",
            "PYTHON=",
        ],
    );
}

#[test]
fn macos_before_14_is_refused() {
    let mac = FakeMac::new("macos", &[]);
    assert_stops(
        mac.setup(&[("FAKE_MACOS", "13.6.7")]),
        &["macOS 13.6.7 is too old", "macOS 14 (Sonoma) or newer"],
    );
}

#[test]
fn missing_or_old_xcode_tools_are_refused_with_what_to_do() {
    let mac = FakeMac::new("xcode", &[]);
    assert_stops(
        mac.setup(&[("FAKE_XCODE", "0")]),
        &[
            "Xcode command line tools are missing",
            "xcode-select --install",
        ],
    );
    assert_stops(
        mac.setup(&[("FAKE_CXX20", "0")]),
        &[
            "Apple clang version 14.0.3",
            "cannot compile C++20 std::format",
            "Xcode 15 or newer",
        ],
    );
}

#[test]
fn cmake_and_promtool_come_from_homebrew_or_are_named() {
    let without_brew = FakeMac::new("nobrew", &["cmake", "promtool", "brew"]);
    assert_stops(
        without_brew.setup(&[]),
        &[
            "missing: cmake prometheus",
            "https://brew.sh",
            "brew install cmake prometheus",
        ],
    );

    // Homebrew is asked for both; here it fails, so the set-up stops before any download
    // and names the command to run by hand.
    let with_brew = FakeMac::new("brew", &["cmake", "promtool"]);
    assert_stops(
        with_brew.setup(&[]),
        &[
            "could not install with Homebrew",
            "brew install cmake prometheus",
        ],
    );
    let asked = std::fs::read_to_string(with_brew.brew_log()).expect("brew was run");
    assert_eq!(asked.trim(), "install --quiet cmake prometheus");
}
