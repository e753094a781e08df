//! The one-line JSON objects testpod prints (std only, so no serde in the pod binary).

/// The few JSON values testpod prints.
pub enum Json {
    /// `true` / `false`.
    Bool(bool),
    /// A count.
    Num(u64),
    /// A measurement, printed with one decimal (microseconds, mostly).
    Float(f64),
    /// A string, escaped.
    Str(String),
}

/// `{"k":v,...}` in the given order.
pub fn object(fields: &[(&str, Json)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Json::Bool(b) => b.to_string(),
                Json::Num(n) => n.to_string(),
                Json::Float(x) if x.is_finite() => format!("{x:.1}"),
                Json::Float(_) => "null".to_owned(),
                Json::Str(s) => quote(s),
            };
            format!("{}:{v}", quote(k))
        })
        .collect();
    format!("{{{}}}", body.join(","))
}

/// `s` as a JSON string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_json_strings() {
        assert_eq!(quote("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    #[test]
    fn prints_objects() {
        let o = object(&[
            ("ok", Json::Bool(true)),
            ("n", Json::Num(3)),
            ("us", Json::Float(12.345)),
            ("nan", Json::Float(f64::NAN)),
        ]);
        assert_eq!(o, r#"{"ok":true,"n":3,"us":12.3,"nan":null}"#);
    }
}
