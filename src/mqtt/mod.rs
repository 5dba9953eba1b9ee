//! Readers over MQTT (SPEC 5): the embedded broker, the gateway's client, and the protocol.
//!
//! The client is a transport only: it parses messages ([`protocol`]) and hands them to the
//! app, publishes the reader commands the core asks for, and acknowledges a QoS 1 message only
//! after the app has handled it (so a crash before the log has it means redelivery, not loss),
//! in the order the messages came (`acks`), except door scans in the backlog of a resumed
//! session, which are dropped as stale (`client`: a door must not open for a scan made while
//! the gateway was away).

mod acks;
pub mod broker;
pub mod client;
pub mod protocol;
pub mod simulate;
