//! Replay and audit (SPEC 9): re-deriving what the log says happened.
//!
//! [`scenario`] is the file format of `scenarios/*.toml`; [`runner`] drives the real core and
//! shell through one on a virtual clock with in-memory transports. [`audit`] walks a stored log: hash chain, event schema, and every door decision re-derived
//! from its recorded inputs with the policy then in force, checked against the state folded
//! from the log up to that point.

pub mod audit;
pub mod runner;
pub mod scenario;
