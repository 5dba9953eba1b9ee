//! Integration tests: one binary. Each module drives real parts (the `palmgate` binary on
//! port 0 with a temporary SQLite file, real HTTP) exactly as a user would.

mod fixtures;
mod modbus;

mod abuse;
mod api_errors;
mod api_sessions;
mod architecture;
mod audit;
mod browser;
mod crash;
mod crash_suite;
mod dashboards;
mod decider;
mod doors;
mod doors_timed;
mod events_golden;
mod faults;
mod mqtt_auth;
mod operator_errors;
mod pages;
mod props;
mod readers;
mod relay_faults;
mod scenarios;
mod snapshots;
mod store_contract;
mod tls;
mod upstream;
mod webhooks;
