//! Where a request's [`RequestOutcome`] goes at its end: [`record`] hands it to the waypoint's
//! telemetry; [`Pending`] makes sure it goes there even when the request is abandoned.

use std::sync::Arc;

use marrow_mesh::telemetry::ResponseFlag;

use crate::context::Context;
use crate::outcome::RequestOutcome;

/// Records a finished request with the waypoint's telemetry.
pub fn record(ctx: &Context, outcome: RequestOutcome) {
    ctx.telemetry.record(&ctx.state.snapshot(), outcome);
}

/// A request's outcome while its answer is being made: dropped before [`Pending::finish`] (the
/// client went away before the response started), it is recorded with `DC`, as Envoy does.
pub struct Pending {
    ctx: Arc<Context>,
    outcome: RequestOutcome,
    armed: bool,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("outcome", &self.outcome)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// Watches `outcome`, recorded with `ctx`'s telemetry if dropped unfinished.
    pub fn new(ctx: Arc<Context>, outcome: RequestOutcome) -> Self {
        Self {
            ctx,
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
            record(&self.ctx, outcome);
        }
    }
}

impl Pending {
    /// Disarms and takes the outcome; a placeholder that allocates nothing takes its place.
    fn finish_in_place(&mut self) -> RequestOutcome {
        self.armed = false;
        let placeholder = RequestOutcome::start(
            None,
            None,
            self.outcome.destination,
            None,
            self.outcome.trust_domain.clone(),
        );
        std::mem::replace(&mut self.outcome, placeholder)
    }
}
