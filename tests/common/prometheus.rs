//! Reading `/metrics` in tests: `promtool check metrics` (the reference linter), and a
//! strict parse of the text format into samples.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of an exposition. Panics on a line that is not valid text format, on a
/// sample without a preceding `# TYPE` for its family, on a duplicate series, and on a
/// histogram whose buckets are not cumulative up to its `_count` (promtool checks none of
/// that).
pub fn parse(text: &str) -> Vec<Sample> {
    let mut typed: Vec<String> = Vec::new();
    let mut histograms: Vec<String> = Vec::new();
    let mut samples: Vec<Sample> = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("`# TYPE name kind`");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "unexpected type in {line:?}"
            );
            typed.push(name.to_owned());
            if kind == "histogram" {
                histograms.push(name.to_owned());
            }
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let sample = parse_sample(line);
        assert!(
            typed
                .iter()
                .any(|family| sample.name.starts_with(family.as_str())),
            "sample {line:?} has no # TYPE"
        );
        assert!(
            !samples
                .iter()
                .any(|s| s.name == sample.name && s.labels == sample.labels),
            "duplicate series {line:?}"
        );
        samples.push(sample);
    }
    for family in &histograms {
        check_histogram(&samples, family);
    }
    samples
}

/// Each series of histogram `family`: bucket counts never fall as `le` grows, and the
/// `+Inf` bucket equals `_count`.
fn check_histogram(samples: &[Sample], family: &str) {
    let bucket_name = format!("{family}_bucket");
    let count_name = format!("{family}_count");
    for count in samples.iter().filter(|s| s.name == count_name) {
        let mut buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.name == bucket_name)
            .filter_map(|s| {
                let mut labels = s.labels.clone();
                let le = labels.remove("le").expect("a bucket has `le`");
                (labels == count.labels).then(|| (parse_bound(&le), s.value))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{family} {:?}: buckets fall as `le` grows: {buckets:?}",
            count.labels
        );
        assert_eq!(
            buckets.last(),
            Some(&(f64::INFINITY, count.value)),
            "{family} {:?}: the +Inf bucket must equal _count",
            count.labels
        );
    }
}

fn parse_bound(le: &str) -> f64 {
    match le {
        "+Inf" => f64::INFINITY,
        bound => bound
            .parse()
            .unwrap_or_else(|_| panic!("bad `le` {bound:?}")),
    }
}

fn parse_sample(line: &str) -> Sample {
    let (series, value) = line.rsplit_once(' ').expect("`series value`");
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').expect("closing brace");
            let mut labels = BTreeMap::new();
            // Our label values never contain `",`; split on it.
            for pair in body.split("\",").filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once("=\"").expect("key=\"value\"");
                labels.insert(key.to_owned(), value.trim_end_matches('"').to_owned());
            }
            (name, labels)
        }
    };
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name in {line:?}"
    );
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

/// The value of the one sample named `name` whose labels include `labels` (0 when there
/// is none yet: counters and histograms appear with their first observation).
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        found.len() <= 1,
        "several series match {name} {labels:?}: {found:?}"
    );
    found.first().map_or(0.0, |s| s.value)
}

/// Runs `promtool check metrics` on `text`; panics with its complaints, or with what to
/// install when promtool is missing (never skips).
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install it with `make setup` (Debian package \
                 `prometheus`; on macOS `brew install prometheus`)"
            )
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool output");
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
