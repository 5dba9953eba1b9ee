//! Integration tests: one binary. Each module drives real parts (the `palmgate` binary on
//! port 0 with a temporary SQLite file, real HTTP) exactly as a user would.

mod fixtures;
mod modbus;

mod api_errors;
mod api_sessions;
mod architecture;
mod audit;
mod crash;
mod decider;
mod doors;
mod events_golden;
mod pages;
mod readers;
mod scenarios;
mod store_contract;
mod webhooks;
