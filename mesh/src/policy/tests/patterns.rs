//! String patterns and CIDR blocks on their own, including every malformed CIDR form.

use super::*;

#[test]
fn string_match_forms() {
    let cases = [
        ("abc", "abc", true),
        ("abc", "abcd", false),
        ("ab*", "abcd", true),
        ("ab*", "xabc", false),
        ("*cd", "abcd", true),
        ("*cd", "abce", false),
        ("*", "x", true),
        ("*", "", false),
        // Istio checks the leading `*` first: `*a*` is the suffix `a*`, literally.
        ("*a*", "xa*", true),
        ("*a*", "xab", false),
        // A `*` in the middle is literal.
        ("a*b", "a*b", true),
        ("a*b", "axb", false),
    ];
    for (pattern, value, want) in cases {
        assert_eq!(
            StringMatch::parse(pattern).matches(value),
            want,
            "{pattern} vs {value}"
        );
        assert_eq!(StringMatch::parse(pattern).to_string(), pattern);
    }
}

#[test]
fn cidr_parsing() {
    let good = [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3", "10.1.2.3/32"),
        ("10.1.2.3/16", "10.1.0.0/16"),
        ("fd00::/64", "fd00::/64"),
        ("fd00::1", "fd00::1/128"),
        ("::/0", "::/0"),
    ];
    for (text, shown) in good {
        assert_eq!(IpBlock::parse(text).unwrap().to_string(), shown, "{text}");
    }
    let too_long = |len, max| move |input| CidrError::PrefixTooLong { input, len, max };
    let address = |input| CidrError::Address { input };
    let syntax = |input| CidrError::PrefixSyntax { input };
    let bad: [(&str, &dyn Fn(String) -> CidrError); 8] = [
        ("10.0.0.0/33", &too_long(33, 32)),
        ("fd00::/129", &too_long(129, 128)),
        ("10.0.0.0/300", &too_long(300, 32)),
        ("10.0.0/8", &address),
        ("shop", &address),
        ("10.0.0.0/x", &syntax),
        ("10.0.0.0/", &syntax),
        ("10.0.0.0/-1", &syntax),
    ];
    for (text, want) in bad {
        let err = IpBlock::parse(text).unwrap_err();
        assert_eq!(err, want(text.to_owned()), "{text}");
        assert!(
            err.to_string()
                .starts_with(&format!("invalid CIDR {text:?}")),
            "{err}"
        );
    }
}
