//! AuthorizationPolicy, PeerAuthentication and RequestAuthentication from their Kubernetes JSON
//! (`security.istio.io` `v1` and `v1beta1`).
//!
//! Nothing but a missing name refuses a document: one bad policy must cost only itself, never
//! the rest of the state. What cannot be read as written — a malformed value, a field marrow
//! does not know (a newer Istio's), an L7-only field — is recorded as a [`Finding`] naming the
//! field and the reason, and handled fail-safe the way istiod handles what it cannot translate
//! (`pilot/pkg/security/authz/model/model.go`, `checkError`): the malformed value is dropped and
//! the rule marked, so an ALLOW rule never matches and a DENY rule denies more. [`authz`] reads
//! AuthorizationPolicy, [`peer`] PeerAuthentication, [`request`] RequestAuthentication; this
//! module holds the error type and the JSON helpers that name fields.

mod authz;
mod l7;
mod peer;
mod request;

pub use authz::authorization_policy;
pub use peer::peer_authentication;
pub use request::request_authentication;

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use super::matcher::{CidrError, IpBlock, Match, Pattern, ServiceAccount, StringMatch};
use super::model::{Finding, PolicyRef};

/// What is wrong with one field of a policy document. `field` is the path inside `spec` (or
/// `metadata`); the policy it belongs to is named by whoever reports it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// `metadata.name` is missing or empty: the only refusal of a whole document.
    #[error("{kind} without metadata.name refused")]
    MissingName {
        /// The Kubernetes kind.
        kind: PolicyKind,
    },
    /// A field has the wrong JSON type.
    #[error("{field} must be {expected}")]
    WrongType {
        /// Where in the document.
        field: String,
        /// What it must be.
        expected: &'static str,
    },
    /// An address block does not parse.
    #[error("{field}: {source}")]
    BadCidr {
        /// Where in the document.
        field: String,
        /// What is wrong with it.
        source: CidrError,
    },
    /// A port is not a number in 0-65535.
    #[error("{field}: invalid port {value:?}, expected 0-65535")]
    BadPort {
        /// Where in the document.
        field: String,
        /// The text.
        value: String,
    },
    /// `spec.action` is not one Istio defines.
    #[error("{field}: unknown action {value:?}, expected ALLOW, DENY, AUDIT or CUSTOM")]
    UnknownAction {
        /// Where in the document.
        field: String,
        /// The text.
        value: String,
    },
    /// An mTLS mode is not one Istio defines.
    #[error("{field}: unknown mode {value:?}, expected STRICT, PERMISSIVE, DISABLE or UNSET")]
    UnknownMode {
        /// Where in the document.
        field: String,
        /// The text.
        value: String,
    },
    /// A field that must say something is empty (Istio's validation refuses it).
    #[error("{field} must not be empty")]
    Empty {
        /// Where in the document.
        field: String,
    },
    /// Two fields that exclude each other are both set.
    #[error("{field} and {other} cannot both be set")]
    Conflict {
        /// One field.
        field: String,
        /// The other.
        other: &'static str,
    },
    /// A field set where Istio does not allow it.
    #[error("{field}: {why}")]
    Misplaced {
        /// Where in the document.
        field: String,
        /// Istio's rule.
        why: &'static str,
    },
    /// A `serviceAccounts` entry is neither `name` nor `namespace/name`.
    #[error(
        "{field}: {value:?} must be <service-account> or <namespace>/<service-account>, without wildcards"
    )]
    BadServiceAccount {
        /// Where in the document.
        field: String,
        /// The text.
        value: String,
    },
    /// A `trustDomains` entry is not a trust domain pattern.
    #[error(
        "{field}: {value:?} must be a trust domain, optionally with one `*` at its start or end"
    )]
    BadTrustDomain {
        /// Where in the document.
        field: String,
        /// The text.
        value: String,
    },
    /// An annotation that must be a boolean is not one.
    #[error("{field}: {value:?} is not a boolean")]
    BadBool {
        /// Where in the document.
        field: String,
        /// The text.
        value: String,
    },
}

/// Which of the `security.istio.io` kinds a document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    /// `AuthorizationPolicy`.
    AuthorizationPolicy,
    /// `PeerAuthentication`.
    PeerAuthentication,
    /// `RequestAuthentication`.
    RequestAuthentication,
}

impl PolicyKind {
    /// The Kubernetes kind, as a label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationPolicy => "AuthorizationPolicy",
            Self::PeerAuthentication => "PeerAuthentication",
            Self::RequestAuthentication => "RequestAuthentication",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Short names for the kinds.
const AUTHZ: PolicyKind = PolicyKind::AuthorizationPolicy;
/// Short names for the kinds.
const PEER: PolicyKind = PolicyKind::PeerAuthentication;
/// Short names for the kinds.
const REQUEST: PolicyKind = PolicyKind::RequestAuthentication;

/// One document being read: names it, and reads fields, recording what it cannot take in the
/// `found` list each helper is given (a malformed part reads as absent).
struct Doc {
    /// The policy.
    policy: PolicyRef,
}

impl Doc {
    fn new(kind: PolicyKind, body: &Value) -> Result<Self, ParseError> {
        let meta = &body["metadata"];
        let name = meta["name"].as_str().filter(|n| !n.is_empty());
        let name = name.ok_or(ParseError::MissingName { kind })?;
        let namespace = meta["namespace"].as_str().unwrap_or("default");
        Ok(Self {
            policy: PolicyRef {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
        })
    }

    /// `value` as an object; JSON null reads as absent, another type as absent and a finding.
    fn object<'v>(
        &self,
        value: &'v Value,
        field: &str,
        found: &mut Vec<Finding>,
    ) -> Option<&'v Map<String, Value>> {
        match value {
            Value::Null => None,
            Value::Object(map) => Some(map),
            _ => {
                found.push(wrong_type(field, "an object"));
                None
            }
        }
    }

    /// `value` as a list; JSON null reads as empty, another type as empty and a finding.
    fn list<'v>(
        &self,
        value: Option<&'v Value>,
        field: &str,
        found: &mut Vec<Finding>,
    ) -> &'v [Value] {
        match value {
            None | Some(Value::Null) => &[],
            Some(Value::Array(items)) => items,
            Some(_) => {
                found.push(wrong_type(field, "a list"));
                &[]
            }
        }
    }

    /// A list of strings, each converted by `convert`; an entry that is not a string, is
    /// empty, or does not convert is dropped with a finding.
    fn strings<T>(
        &self,
        value: Option<&Value>,
        field: &str,
        found: &mut Vec<Finding>,
        mut convert: impl FnMut(&str) -> Result<T, ParseError>,
    ) -> Vec<T> {
        let items = self.list(value, field, found);
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let text = match item {
                Value::String(s) if !s.is_empty() => s.clone(),
                Value::String(_) => {
                    found.push(Finding::Invalid(ParseError::Empty {
                        field: format!("{field}[{i}]"),
                    }));
                    continue;
                }
                // Ports are strings in Istio's schema; a YAML number is taken too.
                Value::Number(n) => n.to_string(),
                _ => {
                    found.push(wrong_type(&format!("{field}[{i}]"), "a string"));
                    continue;
                }
            };
            match convert(&text) {
                Ok(converted) => out.push(converted),
                Err(error) => found.push(Finding::Invalid(error)),
            }
        }
        out
    }

    /// Both forms of a field: `name` and `notName`.
    fn pair<P: Pattern>(
        &self,
        map: &Map<String, Value>,
        at: &str,
        name: &str,
        found: &mut Vec<Finding>,
        convert: impl Fn(&Doc, &str, &str) -> Result<P, ParseError>,
    ) -> Match<P> {
        let not_name = negated(name);
        let field = format!("{at}.{name}");
        let not_field = format!("{at}.{not_name}");
        let any_of = self.strings(map.get(name), &field, found, |s| convert(self, &field, s));
        let none_of = self.strings(map.get(&not_name), &not_field, found, |s| {
            convert(self, &not_field, s)
        });
        Match { any_of, none_of }
    }

    /// A finding for each key of `map` outside `known`.
    fn unknown_fields(
        &self,
        map: &Map<String, Value>,
        at: &str,
        known: &[&str],
        found: &mut Vec<Finding>,
    ) {
        for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
            found.push(Finding::Unknown {
                field: format!("{at}.{key}"),
            });
        }
    }

    fn cidr(&self, field: &str, text: &str) -> Result<IpBlock, ParseError> {
        IpBlock::parse(text).map_err(|source| ParseError::BadCidr {
            field: field.to_owned(),
            source,
        })
    }

    fn port(&self, field: &str, text: &str) -> Result<u16, ParseError> {
        text.parse().map_err(|_| ParseError::BadPort {
            field: field.to_owned(),
            value: text.to_owned(),
        })
    }

    /// `ns/sa`, or a bare `sa` in the policy's own namespace, as istiod reads it
    /// (`serviceAccountRegex` in `pilot/pkg/security/authz/model/generator.go`,
    /// `stringToServiceAccountMatch` in `pilot/pkg/serviceregistry/ambient/authorization.go`),
    /// with the checks of its validation (`CheckServiceAccount` in `pkg/config/security`).
    fn service_account(&self, field: &str, text: &str) -> Result<ServiceAccount, ParseError> {
        ServiceAccount::parse_in(text, &self.policy.namespace).ok_or_else(|| {
            ParseError::BadServiceAccount {
                field: field.to_owned(),
                value: text.to_owned(),
            }
        })
    }

    /// A trust domain pattern: `*`, exact, or one `*` at the start or end, and no `/`
    /// (`CheckTrustDomainValues` in istiod's `pkg/config/security`).
    fn trust_domain(&self, field: &str, text: &str) -> Result<StringMatch, ParseError> {
        let stars = text.matches('*').count();
        let placed = text == "*" || text.starts_with('*') || text.ends_with('*');
        if text.contains('/') || stars > 1 || (stars == 1 && !placed) {
            return Err(ParseError::BadTrustDomain {
                field: field.to_owned(),
                value: text.to_owned(),
            });
        }
        Ok(StringMatch::parse(text))
    }

    /// `spec.selector.matchLabels`: `Ok(None)` when absent or empty (namespace-wide); `Err`
    /// (with the findings recorded) when it cannot be read, so the caller can widen the policy.
    fn selector(
        &self,
        spec: &Map<String, Value>,
        found: &mut Vec<Finding>,
    ) -> Result<Option<BTreeMap<String, String>>, ()> {
        let before = found.len();
        let Some(selector) = self.object(
            spec.get("selector").unwrap_or(&Value::Null),
            "selector",
            found,
        ) else {
            return if found.len() > before {
                Err(())
            } else {
                Ok(None)
            };
        };
        self.unknown_fields(selector, "selector", &["matchLabels"], found);
        let field = "selector.matchLabels";
        let labels = self.object(
            selector.get("matchLabels").unwrap_or(&Value::Null),
            field,
            found,
        );
        let mut out = BTreeMap::new();
        for (key, value) in labels.into_iter().flatten() {
            match value.as_str() {
                Some(value) => {
                    out.insert(key.clone(), value.to_owned());
                }
                None => found.push(wrong_type(&format!("{field}.{key}"), "a string")),
            }
        }
        if found.len() > before {
            return Err(());
        }
        Ok((!out.is_empty()).then_some(out))
    }

    /// Whether `spec.targetRef` or `spec.targetRefs` is set.
    fn targets_waypoint(spec: &Map<String, Value>) -> bool {
        ["targetRef", "targetRefs"]
            .iter()
            .any(|k| spec.get(*k).is_some_and(|v| !v.is_null()))
    }
}

fn wrong_type(field: &str, expected: &'static str) -> Finding {
    Finding::Invalid(ParseError::WrongType {
        field: field.to_owned(),
        expected,
    })
}

/// Whether a JSON value says nothing: null, or an empty string, list or object.
fn is_unset(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(_) | Value::Number(_) => false,
    }
}

/// `notName` for `name`.
fn negated(name: &str) -> String {
    let mut chars = name.chars();
    let first = chars.next().map(|c| c.to_ascii_uppercase());
    format!(
        "not{}{}",
        first.map(String::from).unwrap_or_default(),
        chars.as_str()
    )
}

/// A string pattern; principals may be written with or without `spiffe://`.
fn pattern(_: &Doc, _: &str, text: &str) -> Result<StringMatch, ParseError> {
    Ok(StringMatch::parse(
        text.strip_prefix("spiffe://").unwrap_or(text),
    ))
}
