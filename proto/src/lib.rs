//! callwatch-proto: everything two callwatch parties must agree on.
//!
//! The UDP probe packet format spoken between an agent and a reflector ([`probe`]), the call report
//! schema ([`report`]) and its keys and size limits ([`schema`]), how a report is encoded and signed ([`sign`]), the upload protocol
//! between an agent and a collector ([`upload`]) and the carry-out files that take reports past a
//! block ([`carry`]). This crate does no I/O and reads no clock: every
//! function here is a pure transformation of bytes and values, so both ends and the tests share
//! exactly one definition of each format.

pub mod attest;
pub mod carry;
pub mod carry_key;
pub mod framing;
pub mod id;
pub mod pathtoken;
pub mod platform;
pub mod precision;
pub mod probe;
pub mod profile;
pub mod report;
pub mod schema;
pub mod seal;
pub mod sign;
pub mod upload;

pub use platform::{Platform, Role, Verdict};
pub use report::{CallReport, ReportId, StreamReport, VerdictDetail};
pub use sign::{SignError, SignedReport, VerifyError};
