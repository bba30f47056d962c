//! A fault of the collector's own (a store failing, a task dying), told to a client without its
//! details: those may name a store's host, port or server text, so they go to the log only.

/// Logs `details` at error level under a new random id and returns the id: all a client (an
/// agent over QUIC or TCP, an HTTP client) is told, to quote to the operator.
pub fn log_with_id(details: &str) -> String {
    let id = hex::encode(rand::random::<[u8; 6]>());
    tracing::error!(error_id = %id, "{details}");
    id
}
