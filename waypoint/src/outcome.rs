//! Telemetry's seam: one [`RequestOutcome`] per request (or per L4 connection), filled as the
//! request goes and handed to [`record`] once at its end.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use marrow_mesh::telemetry::ResponseFlag;

/// Everything known of one request when it ends.
#[derive(Clone, Debug)]
pub struct RequestOutcome {
    /// When the request (or connection) started.
    pub start: Instant,
    /// The original client's identity (`-` without one).
    pub source: String,
    /// The original client's address.
    pub client_addr: Option<SocketAddr>,
    /// The destination the client dialled.
    pub destination: SocketAddr,
    /// The Service host, when a Service was addressed.
    pub service: Option<String>,
    /// Request method (empty at L4).
    pub method: String,
    /// The normalized path (empty at L4).
    pub path: String,
    /// `:authority` / `Host`.
    pub authority: String,
    /// `HTTP/1.1`, `HTTP/2`, `tcp`.
    pub protocol: &'static str,
    /// Response status (0 when none was sent).
    pub status: u16,
    /// `grpc-status` of a gRPC response, from its headers or trailers.
    pub grpc_status: Option<u32>,
    /// Request body bytes received from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// The endpoint chosen.
    pub upstream: Option<SocketAddr>,
    /// Envoy's response flag, when something failed.
    pub flag: Option<ResponseFlag>,
    /// How long it took, set by [`record`] when zero.
    pub duration: Duration,
}

impl RequestOutcome {
    /// An outcome starting now.
    pub fn start(
        source: String,
        client_addr: Option<SocketAddr>,
        destination: SocketAddr,
        service: Option<String>,
    ) -> Self {
        Self {
            start: Instant::now(),
            source,
            client_addr,
            destination,
            service,
            method: String::new(),
            path: String::new(),
            authority: String::new(),
            protocol: "tcp",
            status: 0,
            grpc_status: None,
            bytes_in: 0,
            bytes_out: 0,
            upstream: None,
            flag: None,
            duration: Duration::ZERO,
        }
    }
}

/// Records a finished request: for now one access-log line.
// TODO(lead): the request metrics (istio_requests_total, …, reporter waypoint) and the span go
// here, from the same outcome.
pub fn record(mut outcome: RequestOutcome) {
    if outcome.duration.is_zero() {
        outcome.duration = outcome.start.elapsed();
    }
    tracing::info!(
        src = %outcome.source,
        client = ?outcome.client_addr,
        dst = %outcome.destination,
        service = outcome.service.as_deref().unwrap_or("-"),
        method = %outcome.method,
        path = %outcome.path,
        authority = %outcome.authority,
        protocol = outcome.protocol,
        status = outcome.status,
        grpc_status = ?outcome.grpc_status,
        bytes_in = outcome.bytes_in,
        bytes_out = outcome.bytes_out,
        upstream = ?outcome.upstream,
        flags = ResponseFlag::label(outcome.flag),
        duration_ms = outcome.duration.as_millis() as u64,
        "request"
    );
}

/// A request's outcome while its answer is being made: dropped before [`Pending::finish`] (the
/// client went away before the response started), it is recorded with `DC`, as Envoy does.
#[derive(Debug)]
pub struct Pending {
    outcome: RequestOutcome,
    armed: bool,
}

impl Pending {
    /// Watches `outcome`.
    pub fn new(outcome: RequestOutcome) -> Self {
        Self {
            outcome,
            armed: true,
        }
    }

    /// The outcome, for whoever records it next.
    pub fn finish(mut self) -> RequestOutcome {
        self.finish_in_place()
    }
}

impl std::ops::Deref for Pending {
    type Target = RequestOutcome;

    fn deref(&self) -> &RequestOutcome {
        &self.outcome
    }
}

impl std::ops::DerefMut for Pending {
    fn deref_mut(&mut self) -> &mut RequestOutcome {
        &mut self.outcome
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            let mut outcome = self.finish_in_place();
            outcome
                .flag
                .get_or_insert(ResponseFlag::DownstreamTermination);
            record(outcome);
        }
    }
}

impl Pending {
    /// Disarms and takes the outcome; a placeholder that allocates nothing takes its place.
    fn finish_in_place(&mut self) -> RequestOutcome {
        self.armed = false;
        let placeholder =
            RequestOutcome::start(String::new(), None, self.outcome.destination, None);
        std::mem::replace(&mut self.outcome, placeholder)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A log writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(f: impl FnOnce()) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned()
    }

    fn outcome() -> RequestOutcome {
        RequestOutcome::start(
            "spiffe://cluster.local/ns/shop/sa/client".into(),
            None,
            "10.96.0.10:80".parse().unwrap(),
            Some("web.shop.svc.cluster.local".into()),
        )
    }

    #[test]
    fn a_request_abandoned_before_its_answer_is_recorded_as_dc() {
        let log = logged(|| drop(Pending::new(outcome())));
        assert!(
            log.contains("flags=\"DC\"") || log.contains("flags=DC"),
            "{log}"
        );
    }

    #[test]
    fn a_finished_request_is_recorded_once_by_its_new_owner() {
        let log = logged(|| {
            let mut pending = Pending::new(outcome());
            pending.status = 200;
            record(pending.finish());
        });
        assert_eq!(log.matches("request").count(), 1, "{log}");
        assert!(log.contains("status=200"), "{log}");
        assert!(!log.contains("DC"), "{log}");
    }
}
