//! The built-in MQTT broker (rumqttd), for a gateway with no broker of its own.
//!
//! rumqttd's `Broker::start` blocks and builds its own runtimes, so it runs on a std thread;
//! it has no shutdown API and lives as long as the process.

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

/// The largest MQTT payload the embedded broker takes (a capture is ~1 KiB), and the size of one
/// segment of its per-topic message log.
const MAX_PAYLOAD: usize = super::protocol::MAX_PAYLOAD;

#[derive(Debug, thiserror::Error)]
#[error("embedded broker on {addr}: {reason}")]
pub struct BrokerError {
    addr: SocketAddr,
    reason: String,
}

/// Starts the broker on `listen` (port 0: a free port is chosen) and returns its address.
pub fn start_embedded(listen: SocketAddr) -> Result<SocketAddr, BrokerError> {
    let err = |reason: String| BrokerError {
        addr: listen,
        reason,
    };
    // Bind once ourselves: a taken port is reported here, and port 0 becomes a real port.
    let probe = TcpListener::bind(listen).map_err(|e| err(e.to_string()))?;
    let addr = probe.local_addr().map_err(|e| err(e.to_string()))?;
    drop(probe);
    let server = ServerSettings {
        name: "palmgate-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: MAX_PAYLOAD,
            max_inflight_count: 200,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            // rumqttd keeps every topic's recent messages in memory, in segments, until the
            // count is reached: this is the most one topic holds (1 MiB, ~1 000 captures), not a
            // buffer that empties once delivered. At 16 MiB x 10 every busy topic grew for
            // ever as far as a soak could see (BENCHMARKS.md section 7).
            max_segment_size: MAX_PAYLOAD,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        ..Config::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("palmgate-mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|e| err(e.to_string()))?;
    // Wait until it accepts MQTT sessions.
    for _ in 0..100 {
        if mqtt_handshake(addr).is_ok() {
            tracing::info!(%addr, "embedded MQTT broker listening");
            return Ok(addr);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(err("did not start listening within 2 s".into()))
}

/// A whole MQTT 3.1.1 session: CONNECT, CONNACK (accepted), DISCONNECT. A bare TCP connect
/// that hangs up made the broker log an ERROR at every start.
fn mqtt_handshake(addr: SocketAddr) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_millis(500);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    const ID: &[u8] = b"palmgate-start-probe";
    let mut connect = vec![0x10, (10 + 2 + ID.len()) as u8];
    // Protocol "MQTT", level 4, clean session, keep-alive 60 s, then the client id.
    connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60]);
    connect.extend_from_slice(&[0, ID.len() as u8]);
    connect.extend_from_slice(ID);
    s.write_all(&connect)?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack)?;
    if connack != [0x20, 0x02, 0x00, 0x00] {
        return Err(std::io::Error::other(
            "the broker did not accept the session",
        ));
    }
    s.write_all(&[0xE0, 0x00])
}
