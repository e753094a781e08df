//! marrow-wire: the messages marrow's processes on one node exchange over Unix sockets, shared
//! by both ends so they cannot drift apart.
//!
//! - [`enrollment`]: redirect-cni asks the node proxy to enroll, check or forget a pod.
//! - [`seqpacket`]: one message per `SOCK_SEQPACKET` datagram with an optional descriptor, the
//!   transport of enrollment and of the node proxy's hand-off to its successor.
//! - [`cni_version`]: the CNI spec versions redirect-cni speaks, which the node proxy's
//!   installer must write into the configurations it chains redirect-cni into.

pub mod cni_version;
pub mod enrollment;
pub mod seqpacket;
