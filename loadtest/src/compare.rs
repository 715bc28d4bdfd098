//! `wirechat-load compare`: medians of several runs' JSON reports per target, side by side,
//! and each target's ratio to the first (the reference, the bare baseline server).
//!
//! A report file is named `<target>-<n>.json` (as `bench.sh --runs` writes them); the target
//! is the name up to its last `-`. Runs whose load generator was saturated are counted, so a
//! figure that measured the generator is not taken for the server's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The rows: a name, and where in a report its value is. The ratio is always
/// target / reference, whichever way is better.
const METRICS: &[(&str, &[&str])] = &[
    ("connects/s", &["connections", "per_second"]),
    (
        "server RSS per socket, kB",
        &["server", "rss_per_socket_kb"],
    ),
    ("deliveries/s", &["messages", "deliveries_per_s"]),
    ("latency p50, ms", &["latency_ms", "p50"]),
    ("latency p99, ms", &["latency_ms", "p99"]),
    ("latency p99.9, ms", &["latency_ms", "p999"]),
    (
        "server CPU connecting, % of a core",
        &["server", "cpu_connect_pct"],
    ),
    (
        "server CPU a connect, until settled, µs",
        &["server", "cpu_per_connect_us"],
    ),
    (
        "server CPU sending and draining, % of a core",
        &["server", "cpu_run_pct"],
    ),
    (
        "server CPU a close, until idle, µs",
        &["server", "cpu_per_close_us"],
    ),
    (
        "generator busy connecting, %",
        &["loadgen", "busy_connect_pct"],
    ),
    ("generator busy sending, %", &["loadgen", "busy_run_pct"]),
];

fn value_at(report: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(report, |v, key| v.get(key))?.as_f64()
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// The target a report file belongs to: its name up to the last `-`.
fn target_of(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match stem.rsplit_once('-') {
        Some((target, n)) if n.bytes().all(|b| b.is_ascii_digit()) => target.to_owned(),
        _ => stem,
    }
}

fn format_number(x: f64) -> String {
    if x.abs() >= 1000.0 {
        let whole = format!("{:.0}", x.abs());
        let mut out = String::new();
        for (i, c) in whole.chars().enumerate() {
            if i > 0 && (whole.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if x < 0.0 { format!("-{out}") } else { out }
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Targets in the order they first appear, each with its reports.
fn group(reports: Vec<(PathBuf, Value)>) -> Vec<(String, Vec<Value>)> {
    let mut order: Vec<String> = Vec::new();
    let mut by: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (path, report) in reports {
        let target = target_of(&path);
        if !by.contains_key(&target) {
            order.push(target.clone());
        }
        by.entry(target).or_default().push(report);
    }
    order
        .into_iter()
        .map(|t| {
            let reports = by.remove(&t).unwrap_or_default();
            (t, reports)
        })
        .collect()
}

/// The comparison as a Markdown table (medians, with the range of the runs beside each).
fn table(reports: Vec<(PathBuf, Value)>) -> String {
    let mut out = String::new();
    // Reports of different runs side by side would be ratios of nothing.
    for key in ["scenario", "clients", "rate_target"] {
        let mut seen: Vec<&Value> = reports.iter().map(|(_, r)| &r[key]).collect();
        seen.dedup();
        if seen.len() > 1 {
            out.push_str(&format!("Note: the reports differ in `{key}`.\n\n"));
        }
    }
    let groups = group(reports);
    let names: Vec<&str> = groups.iter().map(|(t, _)| t.as_str()).collect();
    out.push_str(&format!("| runs: {} |", runs_line(&groups)));
    for (i, name) in names.iter().enumerate() {
        out.push_str(&format!(" {name} |"));
        if i > 0 {
            out.push_str(&format!(" {name} / {} |", names[0]));
        }
    }
    out.push('\n');
    out.push_str("| --- |");
    for i in 0..names.len() {
        out.push_str(if i > 0 { " ---: | ---: |" } else { " ---: |" });
    }
    out.push('\n');
    for &(name, path) in METRICS {
        let medians: Vec<Option<(f64, f64, f64)>> = groups
            .iter()
            .map(|(_, reports)| {
                let mut values: Vec<f64> = reports
                    .iter()
                    .filter_map(|r| value_at(r, path))
                    .filter(|v| v.is_finite())
                    .collect();
                let m = median(&mut values)?;
                Some((m, values[0], values[values.len() - 1]))
            })
            .collect();
        // A row nothing measured is left out; so are messages in runs that send none
        // (`idle`), where every figure is a zero that says nothing. A zero measured
        // elsewhere (an idle generator) is a figure.
        let nothing = |m: &Option<(f64, f64, f64)>| m.is_none();
        let unsent = |m: &Option<(f64, f64, f64)>| m.is_none_or(|(m, _, _)| m == 0.0);
        let about_messages = matches!(path.first(), Some(&("latency_ms" | "messages")));
        if medians.iter().all(nothing) || (about_messages && medians.iter().all(unsent)) {
            continue;
        }
        out.push_str(&format!("| {name} |"));
        for (i, m) in medians.iter().enumerate() {
            match m {
                Some((m, lo, hi)) if groups[i].1.len() > 1 => out.push_str(&format!(
                    " {} ({}–{}) |",
                    format_number(*m),
                    format_number(*lo),
                    format_number(*hi)
                )),
                Some((m, _, _)) => out.push_str(&format!(" {} |", format_number(*m))),
                None => out.push_str(" – |"),
            }
            if i > 0 {
                match (medians[0], m) {
                    (Some((reference, _, _)), Some((m, _, _))) if reference != 0.0 => {
                        out.push_str(&format!(" {:.2}× |", m / reference));
                    }
                    _ => out.push_str(" – |"),
                }
            }
        }
        out.push('\n');
    }
    out.push_str("| missing / duplicate (all runs) |");
    for (i, (_, reports)) in groups.iter().enumerate() {
        let total = |key: &str| -> i64 {
            reports
                .iter()
                .map(|r| r["messages"][key].as_i64().unwrap_or(0))
                .sum()
        };
        out.push_str(&format!(
            " {} / {} |",
            total("missing"),
            total("duplicates")
        ));
        if i > 0 {
            out.push_str(" |");
        }
    }
    out.push('\n');
    out.push_str("| runs with the generator saturated (> 90 %) |");
    for (i, (_, reports)) in groups.iter().enumerate() {
        let saturated = reports
            .iter()
            .filter(|r| r["loadgen"]["saturated"].as_bool() == Some(true))
            .count();
        out.push_str(&format!(" {saturated} of {} |", reports.len()));
        if i > 0 {
            out.push_str(" |");
        }
    }
    out.push('\n');
    out
}

fn runs_line(groups: &[(String, Vec<Value>)]) -> String {
    groups
        .iter()
        .map(|(_, r)| r.len().to_string())
        .collect::<Vec<_>>()
        .join(" / ")
}

pub fn main(files: &[PathBuf]) -> Result<(), String> {
    if files.is_empty() {
        return Err("compare: give the runs' JSON reports".into());
    }
    let mut reports = Vec::with_capacity(files.len());
    for path in files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("compare: reading {}: {e}", path.display()))?;
        let report: Value = serde_json::from_str(&text)
            .map_err(|e| format!("compare: {} is not a report: {e}", path.display()))?;
        reports.push((path.clone(), report));
    }
    print!("{}", table(reports));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(p99: f64, busy: f64, missing: i64) -> Value {
        json!({
            "connections": {"per_second": 1000.0},
            "latency_ms": {"p50": 1.0, "p99": p99, "p999": p99},
            "messages": {"deliveries_per_s": 10.0, "missing": missing, "duplicates": 0},
            "loadgen": {"busy_run_pct": busy, "saturated": busy > 90.0},
        })
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn targets_are_named_by_their_files() {
        assert_eq!(target_of(Path::new("/x/baseline-3.json")), "baseline");
        assert_eq!(target_of(Path::new("wire-chat-12.json")), "wire-chat");
        assert_eq!(target_of(Path::new("after.json")), "after");
    }

    #[test]
    fn each_target_is_a_ratio_to_the_first() {
        let runs = vec![
            (PathBuf::from("baseline-1.json"), report(10.0, 50.0, 0)),
            (PathBuf::from("wirechat-1.json"), report(30.0, 95.0, 1)),
            (PathBuf::from("baseline-2.json"), report(20.0, 50.0, 0)),
            (PathBuf::from("wirechat-2.json"), report(50.0, 50.0, 0)),
            (PathBuf::from("baseline-3.json"), report(30.0, 50.0, 0)),
            (PathBuf::from("wirechat-3.json"), report(40.0, 50.0, 0)),
        ];
        let table = table(runs);
        let p99 = table
            .lines()
            .find(|l| l.starts_with("| latency p99,"))
            .expect("a p99 row");
        assert_eq!(
            p99,
            "| latency p99, ms | 20.0 (10.0–30.0) | 40.0 (30.0–50.0) | 2.00× |"
        );
        assert!(table.contains("| 0 / 0 | 1 / 0 |"), "{table}");
        assert!(table.contains("| 0 of 3 | 1 of 3 |"), "{table}");
        // Nothing measured RSS: no row for it.
        assert!(!table.contains("RSS"), "{table}");
        assert!(!table.contains("Note:"), "{table}");
    }

    #[test]
    fn runs_of_different_shapes_are_pointed_out() {
        let mut other = report(1.0, 0.0, 0);
        other["clients"] = json!(10);
        let runs = vec![
            (PathBuf::from("a-1.json"), report(1.0, 0.0, 0)),
            (PathBuf::from("b-1.json"), other),
        ];
        let table = table(runs);
        assert!(
            table.starts_with("Note: the reports differ in `clients`."),
            "{table}"
        );
        // An idle generator's zero is a figure, not a missing one.
        assert!(
            table.contains("| generator busy sending, % | 0.00 | 0.00 | – |"),
            "{table}"
        );
    }

    #[test]
    fn big_numbers_get_separators() {
        assert_eq!(format_number(1_234_567.0), "1,234,567");
        assert_eq!(format_number(999.4), "999");
        assert_eq!(format_number(4.256), "4.26");
    }
}
