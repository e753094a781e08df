//! The `/explain` query of the admin APIs (the node proxy's and the waypoint's): the same
//! arguments as `node-proxy explain`, as `from=ns/pod|ip:ADDR&to=ns/pod&port=N` and, for a
//! request at a waypoint, `method=`, `path=`, `host=`, `header=K%3DV` (repeatable),
//! `waypoint=ns/name`; answered by the same functions as the command.

use super::{ExplainError, ExplainSource, Explanation, RequestQuery, explain, explain_request};
use crate::http::{query_param as param, query_params as params};
use crate::identity::TrustDomain;
use crate::state::Snapshot;

/// A parsed `/explain` query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExplainQuery {
    /// `from=`.
    pub from: ExplainSource,
    /// `to=`, `(namespace, pod)`.
    pub to: (String, String),
    /// `port=`.
    pub port: u16,
    /// The request fields; empty for the L4 question.
    pub request: RequestQuery,
}

impl ExplainQuery {
    /// Parses a query string (after the `?`); the error names the argument and the reason.
    pub fn parse(query: &str) -> Result<Self, String> {
        let from: ExplainSource = param(query, "from")
            .ok_or("missing from=")?
            .parse()
            .map_err(|e: ExplainError| e.to_string())?;
        let to = param(query, "to").ok_or("missing to=")?;
        let to = super::workload_ref(&to, "destination").map_err(|e| e.to_string())?;
        let port: u16 = param(query, "port")
            .ok_or("missing port=")?
            .parse()
            .map_err(|_| "port= is not a port number".to_owned())?;
        let request = RequestQuery {
            method: param(query, "method"),
            path: param(query, "path"),
            host: param(query, "host"),
            headers: params(query, "header"),
            waypoint: param(query, "waypoint"),
        };
        Ok(Self {
            from,
            to,
            port,
            request,
        })
    }

    /// The answer from `snap`: the L4 decision, or with any request field the waypoint's
    /// decision for that request (one code path with the data path: [`explain`] /
    /// [`explain_request`]).
    pub fn answer(
        &self,
        snap: &Snapshot,
        trust_domain: &TrustDomain,
    ) -> Result<Explanation, ExplainError> {
        let to = (self.to.0.as_str(), self.to.1.as_str());
        if self.request.is_empty() {
            explain(snap, trust_domain, &self.from, to, self.port)
        } else {
            explain_request(snap, trust_domain, &self.from, to, self.port, &self.request)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_with_their_request_fields_and_bad_ones_say_why() {
        let q = ExplainQuery::parse(
            "from=shop%2Fclient&to=shop/web&port=80&method=DELETE&path=%2F%2Fapi&header=x-a%3D1&header=x-b%3D2",
        )
        .unwrap();
        assert_eq!(q.to, ("shop".to_owned(), "web".to_owned()));
        assert_eq!(q.port, 80);
        assert_eq!(q.request.method.as_deref(), Some("DELETE"));
        assert_eq!(q.request.path.as_deref(), Some("//api"));
        assert_eq!(q.request.headers, ["x-a=1", "x-b=2"]);
        assert!(
            ExplainQuery::parse("from=shop/client&to=shop/web")
                .unwrap_err()
                .contains("port=")
        );
        assert!(
            ExplainQuery::parse("from=shop/client&to=shop/web&port=http")
                .unwrap_err()
                .contains("not a port")
        );
    }
}
