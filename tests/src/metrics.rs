//! Reading the proxy's Prometheus text: samples with their labels, sums over a label filter.
//!
//! Labels are parsed (quoted values with `\\`, `\"` and `\n` escapes), not matched as
//! substrings, so `destination_principal="…/sa/web"` never matches `…/sa/web-2`.

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The metric name (for counters, with its `_total` suffix).
    pub name: String,
    /// The labels.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// Whether every `(label, value)` of `want` is on this sample.
    pub fn has(&self, want: &[(&str, &str)]) -> bool {
        want.iter()
            .all(|(k, v)| self.labels.get(*k).is_some_and(|have| have == v))
    }
}

/// Every sample of the exposition `text`; comment lines and lines that do not parse are skipped
/// (the caller sees them missing).
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// The samples of metric `name` carrying every label of `want`.
pub fn matching(text: &str, name: &str, want: &[(&str, &str)]) -> Vec<Sample> {
    samples(text)
        .into_iter()
        .filter(|s| s.name == name && s.has(want))
        .collect()
}

/// The sum of the samples of metric `name` carrying every label of `want` (0 when none).
pub fn sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    matching(text, name, want).iter().map(|s| s.value).sum()
}

/// As [`sum`], as a count (a counter's or gauge's whole value).
pub fn count(text: &str, name: &str, want: &[(&str, &str)]) -> u64 {
    let total = sum(text, name, want);
    if total.is_finite() && total > 0.0 {
        total.round() as u64
    } else {
        0
    }
}

/// The value of the unlabelled (or only) sample of `name`, if present.
pub fn value(text: &str, name: &str) -> Option<f64> {
    samples(text)
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.value)
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    // `value [timestamp]`
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_owned();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.insert(key, value);
        s = &s[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP istio_tcp_connections_opened Opened.
# TYPE istio_tcp_connections_opened counter
istio_tcp_connections_opened_total{reporter="source",destination_principal="spiffe://cluster.local/ns/shop/sa/web",connection_security_policy="mutual_tls"} 2
istio_tcp_connections_opened_total{reporter="source",destination_principal="spiffe://cluster.local/ns/shop/sa/web-2",connection_security_policy="mutual_tls"} 5
istio_tcp_connections_opened_total{reporter="destination",destination_principal="unknown",connection_security_policy="none"} 1
marrow_config_generation 3
weird{msg="a \"quoted\" \\ value, with } inside"} 1.5e0
broken{unterminated="x} 1
# EOF
"#;

    #[test]
    fn sums_only_exact_label_matches() {
        let web = [
            ("reporter", "source"),
            (
                "destination_principal",
                "spiffe://cluster.local/ns/shop/sa/web",
            ),
        ];
        assert_eq!(count(TEXT, "istio_tcp_connections_opened_total", &web), 2);
        assert_eq!(
            count(
                TEXT,
                "istio_tcp_connections_opened_total",
                &[("connection_security_policy", "mutual_tls")]
            ),
            7
        );
        assert_eq!(count(TEXT, "istio_tcp_connections_opened_total", &[]), 8);
        assert_eq!(
            count(
                TEXT,
                "istio_tcp_connections_opened_total",
                &[("reporter", "nobody")]
            ),
            0
        );
    }

    #[test]
    fn reads_unlabelled_values_and_escapes() {
        assert_eq!(value(TEXT, "marrow_config_generation"), Some(3.0));
        assert_eq!(value(TEXT, "missing"), None);
        let weird = matching(TEXT, "weird", &[]);
        assert_eq!(weird.len(), 1);
        assert_eq!(
            weird[0].labels["msg"],
            r#"a "quoted" \ value, with } inside"#
        );
        assert!((weird[0].value - 1.5).abs() < f64::EPSILON);
    }

    #[test]
    fn skips_malformed_lines() {
        assert!(matching(TEXT, "broken", &[]).is_empty());
        assert!(samples("no_value\n{x=\"y\"} 1\nname{x=y} 1\nname nan-ish\n").is_empty());
    }
}
