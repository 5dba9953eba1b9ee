//! The pure core: every rule of palmgate as data in, data out.
//!
//! Nothing here performs IO, reads a clock or draws randomness (a test in `tests/` greps for
//! it): the shell passes `now` and random ids in, appends the events the core returns, folds
//! them back with `evolve`, and performs the effects.

pub mod chunk_map;
pub mod command;
pub mod decider;
pub mod doors;
pub mod event;
pub mod ids;
pub mod matcher;
pub mod policy;
pub mod ratelimit;
pub mod schedule;
pub mod session;
pub mod snapshot;
pub mod split_map;
pub mod state;
pub mod upstream;
pub mod webhook;

pub use command::{AttemptResult, Capture, Command, EnrollRequest, NewWebhook, RelayReport};
pub use decider::{Decision, Effect, Outcome, ReaderCommand, Rejection, decide};
pub use event::{Event, Expected, Recorded, StreamAppend};
pub use ids::*;
pub use state::{Rules, State};
