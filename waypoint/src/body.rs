//! The one body type the proxy sends either way, and bodies it makes itself.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// An error of a streamed body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy sends, either way.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body of `bytes`.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}
