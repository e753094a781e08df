//! The value kinds of settings: how each is read from text (the same for the file, the
//! environment and the flags) and spelled back for `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::{Parser, Shape};

/// The value of a one-value setting: the last text given.
///
/// # Errors
/// When no text was given.
pub fn one<'a>(values: &[&'a str]) -> Result<&'a str, String> {
    values
        .last()
        .copied()
        .ok_or_else(|| "no value given".to_owned())
}

fn number(values: &[&str]) -> Result<u64, String> {
    one(values)?.parse::<u64>().map_err(|e| e.to_string())
}

fn millis(d: &Duration) -> u128 {
    d.as_millis()
}

/// A file or directory.
pub const PATH: Parser<PathBuf> = Parser {
    shape: Shape::Value,
    value_name: "PATH",
    expected: "a path",
    parse: |v| one(v).map(PathBuf::from),
    show: |p| Some(p.display().to_string()),
};

/// A file or directory, unset by default.
pub const SOME_PATH: Parser<Option<PathBuf>> = Parser {
    shape: Shape::Value,
    value_name: "PATH",
    expected: "a path",
    parse: |v| one(v).map(|p| Some(PathBuf::from(p))),
    show: |p| p.as_ref().map(|p| p.display().to_string()),
};

/// A name or other text.
pub const TEXT: Parser<String> = Parser {
    shape: Shape::Value,
    value_name: "NAME",
    expected: "a name",
    parse: |v| one(v).map(str::to_owned),
    show: |t| Some(t.clone()),
};

/// A name or other text, unset by default.
pub const SOME_TEXT: Parser<Option<String>> = Parser {
    shape: Shape::Value,
    value_name: "NAME",
    expected: "a name",
    parse: |v| one(v).map(|t| Some(t.to_owned())),
    show: Clone::clone,
};

/// A URL, unset by default.
pub const SOME_URL: Parser<Option<String>> = Parser {
    shape: Shape::Value,
    value_name: "URL",
    expected: "a URL",
    parse: |v| one(v).map(|t| Some(t.to_owned())),
    show: Clone::clone,
};

/// Names, comma-separated or repeated.
pub const TEXT_LIST: Parser<Vec<String>> = Parser {
    shape: Shape::List,
    value_name: "NAME",
    expected: "names, comma-separated",
    parse: |v| Ok(v.iter().map(|t| (*t).to_owned()).collect()),
    show: |list| (!list.is_empty()).then(|| list.join(",")),
};

/// A socket address, `IP:PORT`.
pub const ADDR: Parser<SocketAddr> = Parser {
    shape: Shape::Value,
    value_name: "ADDR",
    expected: "an IP:PORT address such as 0.0.0.0:15020",
    parse: |v| {
        one(v)?
            .parse()
            .map_err(|e: std::net::AddrParseError| e.to_string())
    },
    show: |a| Some(a.to_string()),
};

/// A count.
pub const COUNT: Parser<usize> = Parser {
    shape: Shape::Value,
    value_name: "N",
    expected: "a whole number",
    parse: |v| {
        one(v)?
            .parse()
            .map_err(|e: std::num::ParseIntError| e.to_string())
    },
    show: |n| Some(n.to_string()),
};

/// A duration in milliseconds.
pub const MILLIS: Parser<Duration> = Parser {
    shape: Shape::Value,
    value_name: "MS",
    expected: "a whole number of milliseconds",
    parse: |v| number(v).map(Duration::from_millis),
    show: |d| Some(millis(d).to_string()),
};

/// A duration in seconds.
pub const SECS: Parser<Duration> = Parser {
    shape: Shape::Value,
    value_name: "SECS",
    expected: "a whole number of seconds",
    parse: |v| number(v).map(Duration::from_secs),
    show: |d| Some(d.as_secs().to_string()),
};

/// On or off: a flag without a value, `true` or `false` elsewhere.
pub const SWITCH: Parser<bool> = Parser {
    shape: Shape::Switch,
    value_name: "BOOL",
    expected: "true or false",
    parse: |v| match one(v)? {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{other:?} is neither true nor false")),
    },
    show: |_| None,
};

/// A port range `LO-HI`.
pub const PORT_RANGE: Parser<(u16, u16)> = Parser {
    shape: Shape::Value,
    value_name: "LO-HI",
    expected: "a port range LO-HI",
    parse: |v| parse_port_range(one(v)?),
    show: |(lo, hi)| Some(format!("{lo}-{hi}")),
};

/// Extra headers `NAME=VALUE`, comma-separated or repeated.
pub const HEADERS: Parser<Vec<(String, String)>> = Parser {
    shape: Shape::List,
    value_name: "NAME=VALUE",
    expected: "NAME=VALUE pairs",
    parse: |v| v.iter().map(|t| parse_header(t)).collect(),
    show: |_| None,
};

/// Parses `NAME=VALUE` (an extra header for the CA).
///
/// # Errors
/// When there is no `=`.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

/// Parses a port range `LO-HI`.
///
/// # Errors
/// Without a `-`, or when a side is no port number.
pub fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not LO-HI"))?;
    let port = |p: &str| p.trim().parse::<u16>().map_err(|e| format!("{p:?}: {e}"));
    Ok((port(lo)?, port(hi)?))
}
