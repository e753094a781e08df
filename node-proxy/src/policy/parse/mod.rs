//! AuthorizationPolicy and PeerAuthentication from their Kubernetes JSON (`security.istio.io`
//! `v1` and `v1beta1`). Unknown fields are ignored; a field of the wrong shape or value refuses
//! the whole document, and the error names the policy, the field and the reason.
//!
//! [`authz`] reads AuthorizationPolicy, [`peer`] PeerAuthentication; this module holds the
//! shared error type and the JSON helpers that name fields.

mod authz;
mod peer;

pub use authz::authorization_policy;
pub use peer::peer_authentication;

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use super::matcher::{CidrError, IpBlock, Match, Pattern, ServiceAccount, StringMatch};
use super::model::PolicyRef;

/// Why a policy document was refused. `kind` is the Kubernetes kind, `policy` its `ns/name`,
/// `field` the path inside `spec`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// `metadata.name` is missing or empty.
    #[error("{kind} without metadata.name refused")]
    MissingName {
        /// The Kubernetes kind.
        kind: PolicyKind,
    },
    /// A field has the wrong JSON type.
    #[error("{kind} {policy} refused: {field} must be {expected}")]
    WrongType {
        /// The Kubernetes kind.
        kind: PolicyKind,
        /// The policy.
        policy: PolicyRef,
        /// Where in the document.
        field: String,
        /// What it must be.
        expected: &'static str,
    },
    /// An address block does not parse.
    #[error("{kind} {policy} refused: {field}: {source}")]
    BadCidr {
        /// The Kubernetes kind.
        kind: PolicyKind,
        /// The policy.
        policy: PolicyRef,
        /// Where in the document.
        field: String,
        /// What is wrong with it.
        source: CidrError,
    },
    /// A port is not a number in 0-65535.
    #[error("{kind} {policy} refused: {field}: invalid port {value:?}, expected 0-65535")]
    BadPort {
        /// The Kubernetes kind.
        kind: PolicyKind,
        /// The policy.
        policy: PolicyRef,
        /// Where in the document.
        field: String,
        /// The refused text.
        value: String,
    },
    /// `spec.action` is not one Istio defines.
    #[error("{kind} {policy} refused: {field}: unknown action {value:?}, expected ALLOW or DENY")]
    UnknownAction {
        /// The Kubernetes kind.
        kind: PolicyKind,
        /// The policy.
        policy: PolicyRef,
        /// Where in the document.
        field: String,
        /// The refused text.
        value: String,
    },
    /// AUDIT or CUSTOM: valid Istio, but marrow enforces only ALLOW and DENY.
    #[error(
        "{kind} {policy} refused: {field}: action {value} is not supported by marrow \
         (only ALLOW and DENY are enforced)"
    )]
    UnsupportedAction {
        /// The Kubernetes kind.
        kind: PolicyKind,
        /// The policy.
        policy: PolicyRef,
        /// Where in the document.
        field: String,
        /// AUDIT or CUSTOM.
        value: String,
    },
    /// An mTLS mode is not one Istio defines.
    #[error(
        "{kind} {policy} refused: {field}: unknown mode {value:?}, \
         expected STRICT, PERMISSIVE, DISABLE or UNSET"
    )]
    UnknownMode {
        /// The Kubernetes kind.
        kind: PolicyKind,
        /// The policy.
        policy: PolicyRef,
        /// Where in the document.
        field: String,
        /// The refused text.
        value: String,
    },
    /// A `from.source`, `to.operation` or `when` entry sets nothing, which Istio refuses.
    #[error("{kind} {policy} refused: {field} must not be empty")]
    Empty {
        /// The Kubernetes kind.
        kind: PolicyKind,
        /// The policy.
        policy: PolicyRef,
        /// Where in the document.
        field: String,
    },
    /// A `when` key Istio does not define.
    #[error("{kind} {policy} refused: {field}: unknown condition key {value:?}")]
    UnknownConditionKey {
        /// The Kubernetes kind.
        kind: PolicyKind,
        /// The policy.
        policy: PolicyRef,
        /// Where in the document.
        field: String,
        /// The refused key.
        value: String,
    },
    /// Two fields that exclude each other are both set.
    #[error("{kind} {policy} refused: {field} and {other} cannot both be set")]
    Conflict {
        /// The Kubernetes kind.
        kind: PolicyKind,
        /// The policy.
        policy: PolicyRef,
        /// One field.
        field: String,
        /// The other.
        other: &'static str,
    },
    /// A `serviceAccounts` entry is not `namespace/name`.
    #[error("{kind} {policy} refused: {field}: {value:?} must be <namespace>/<service-account>")]
    BadServiceAccount {
        /// The Kubernetes kind.
        kind: PolicyKind,
        /// The policy.
        policy: PolicyRef,
        /// Where in the document.
        field: String,
        /// The refused text.
        value: String,
    },
}

/// Which of the two policy kinds a document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    /// `AuthorizationPolicy`.
    AuthorizationPolicy,
    /// `PeerAuthentication`.
    PeerAuthentication,
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AuthorizationPolicy => "AuthorizationPolicy",
            Self::PeerAuthentication => "PeerAuthentication",
        })
    }
}

/// Short names for the kinds.
const AUTHZ: PolicyKind = PolicyKind::AuthorizationPolicy;
/// Short names for the kinds.
const PEER: PolicyKind = PolicyKind::PeerAuthentication;

/// Names errors after one document.
struct Doc {
    /// The Kubernetes kind.
    kind: PolicyKind,
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
            kind,
            policy: PolicyRef {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
        })
    }

    fn wrong_type(&self, field: &str, expected: &'static str) -> ParseError {
        ParseError::WrongType {
            kind: self.kind,
            policy: self.policy.clone(),
            field: field.to_owned(),
            expected,
        }
    }

    /// `value` as an object; JSON null reads as empty.
    fn object<'v>(
        &self,
        value: &'v Value,
        field: &str,
    ) -> Result<Option<&'v Map<String, Value>>, ParseError> {
        match value {
            Value::Null => Ok(None),
            Value::Object(map) => Ok(Some(map)),
            _ => Err(self.wrong_type(field, "an object")),
        }
    }

    /// `value` as a list; JSON null reads as empty.
    fn list<'v>(&self, value: Option<&'v Value>, field: &str) -> Result<&'v [Value], ParseError> {
        match value {
            None | Some(Value::Null) => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(self.wrong_type(field, "a list")),
        }
    }

    /// A list of strings, each converted by `convert`.
    fn strings<T>(
        &self,
        value: Option<&Value>,
        field: &str,
        mut convert: impl FnMut(&str) -> Result<T, ParseError>,
    ) -> Result<Vec<T>, ParseError> {
        let items = self.list(value, field)?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let text = match item {
                Value::String(s) => s.clone(),
                // Ports are strings in Istio's schema; a YAML number is taken too.
                Value::Number(n) => n.to_string(),
                _ => return Err(self.wrong_type(&format!("{field}[{i}]"), "a string")),
            };
            out.push(convert(&text)?);
        }
        Ok(out)
    }

    /// Both forms of a field: `name` and `notName`.
    fn pair<P: Pattern>(
        &self,
        map: &Map<String, Value>,
        at: &str,
        name: &str,
        convert: impl Fn(&Doc, &str, &str) -> Result<P, ParseError>,
    ) -> Result<Match<P>, ParseError> {
        let not_name = negated(name);
        let field = format!("{at}.{name}");
        let not_field = format!("{at}.{not_name}");
        Ok(Match {
            any_of: self.strings(map.get(name), &field, |s| convert(self, &field, s))?,
            none_of: self.strings(map.get(&not_name), &not_field, |s| {
                convert(self, &not_field, s)
            })?,
        })
    }

    fn cidr(&self, field: &str, text: &str) -> Result<IpBlock, ParseError> {
        IpBlock::parse(text).map_err(|source| ParseError::BadCidr {
            kind: self.kind,
            policy: self.policy.clone(),
            field: field.to_owned(),
            source,
        })
    }

    fn port(&self, field: &str, text: &str) -> Result<u16, ParseError> {
        text.parse().map_err(|_| ParseError::BadPort {
            kind: self.kind,
            policy: self.policy.clone(),
            field: field.to_owned(),
            value: text.to_owned(),
        })
    }

    fn service_account(&self, field: &str, text: &str) -> Result<ServiceAccount, ParseError> {
        ServiceAccount::parse(text).ok_or_else(|| ParseError::BadServiceAccount {
            kind: self.kind,
            policy: self.policy.clone(),
            field: field.to_owned(),
            value: text.to_owned(),
        })
    }

    fn empty(&self, field: String) -> ParseError {
        ParseError::Empty {
            kind: self.kind,
            policy: self.policy.clone(),
            field,
        }
    }

    /// `spec.selector.matchLabels`; `None` when absent or empty (namespace-wide).
    fn selector(
        &self,
        spec: &Map<String, Value>,
    ) -> Result<Option<BTreeMap<String, String>>, ParseError> {
        let Some(selector) =
            self.object(spec.get("selector").unwrap_or(&Value::Null), "selector")?
        else {
            return Ok(None);
        };
        let field = "selector.matchLabels";
        let labels = self.object(selector.get("matchLabels").unwrap_or(&Value::Null), field)?;
        let mut out = BTreeMap::new();
        for (key, value) in labels.into_iter().flatten() {
            let value = value
                .as_str()
                .ok_or_else(|| self.wrong_type(&format!("{field}.{key}"), "a string"))?;
            out.insert(key.clone(), value.to_owned());
        }
        Ok((!out.is_empty()).then_some(out))
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
