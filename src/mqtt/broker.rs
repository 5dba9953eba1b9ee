//! The built-in MQTT broker (rumqttd), for a gateway with no broker of its own.
//!
//! rumqttd's `Broker::start` blocks and builds its own runtimes, so it runs on a std thread;
//! it has no shutdown API and lives as long as the process. A second thread probes it with a
//! whole MQTT session every [`PROBE_EVERY`]: while it fails, `/readyz` answers 503 ([`unready`]).

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a running embedded broker is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// How long one liveness probe may take (a loaded host must not look like a dead broker).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The size of one segment of the embedded broker's per-topic message log (a capture is ~1 KiB).
const SEGMENT_SIZE: usize = super::protocol::MAX_PAYLOAD;

/// The largest MQTT packet the embedded broker takes (rumqttd's `max_payload_size` bounds a
/// packet's remaining length): four times the largest reader message the gateway parses
/// ([`super::protocol::MAX_PAYLOAD`]), so that a message over the parser's limit reaches the
/// gateway and is rejected, logged and counted (`too_large`, SPEC 5) while its reader stays
/// connected. A packet over this limit makes rumqttd drop the sender's connection (and publish
/// its last will); it must stay below the gateway client's own incoming limit.
pub const MAX_PACKET: usize = 4 * super::protocol::MAX_PAYLOAD;

#[derive(Debug, thiserror::Error)]
#[error("embedded broker on {addr}: {reason}")]
pub struct BrokerError {
    addr: SocketAddr,
    reason: String,
}

/// Starts the broker on `listen` (port 0: a free port is chosen) and returns its address.
/// With a `password` (non-empty), a client must give it in its CONNECT (any user name): one
/// without it, or with another, is disconnected before its session starts.
pub fn start_embedded(listen: SocketAddr, password: &str) -> Result<SocketAddr, BrokerError> {
    let err = |reason: String| BrokerError {
        addr: listen,
        reason,
    };
    // Bind once ourselves: a taken port is reported here, and port 0 becomes a real port.
    let probe = TcpListener::bind(listen).map_err(|e| err(e.to_string()))?;
    let addr = probe.local_addr().map_err(|e| err(e.to_string()))?;
    drop(probe);
    let mut server = ServerSettings {
        name: "palmgate-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: MAX_PACKET,
            max_inflight_count: 200,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let password: Arc<str> = password.into();
    if !password.is_empty() {
        let expected = password.clone();
        let logged = Arc::new(crate::app::throttle::LogThrottle::default());
        server.set_auth_handler(move |client_id: String, _user: String, given: String| {
            use subtle::ConstantTimeEq;
            let ok: bool = given.as_bytes().ct_eq(expected.as_bytes()).into();
            if !ok {
                metrics::counter!("palmgate_mqtt_embedded_logins_refused_total").increment(1);
                if let Some(left_out) = logged.admit(std::time::Instant::now()) {
                    tracing::warn!(
                        client_id = %client_id.escape_debug(),
                        left_out_before = left_out,
                        "embedded MQTT broker: a client gave no password or a wrong one; refused"
                    );
                }
            }
            std::future::ready(ok)
        });
    }
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            // rumqttd keeps every topic's recent messages in memory, in segments, until the
            // count is reached: this is the most one topic holds (1 MiB, ~1 000 captures), not a
            // buffer that empties once delivered. At 16 MiB x 10 every busy topic grew for
            // ever as far as a soak could see (BENCHMARKS.md section 7). A segment is closed
            // once it reaches this size, so it may overflow it by one packet: a topic flooded
            // with packets of `MAX_PACKET` holds at most 5 x (256 KiB + 1 MiB).
            max_segment_size: SEGMENT_SIZE,
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
        let probe = mqtt_handshake(
            addr,
            b"palmgate-start-probe",
            &password,
            Duration::from_millis(500),
        );
        if probe.is_ok() {
            tracing::info!(%addr, "embedded MQTT broker listening");
            watch(addr, password.clone(), PROBE_EVERY).map_err(|e| err(e.to_string()))?;
            return Ok(addr);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(err("did not start listening within 2 s".into()))
}

/// Embedded brokers of this process that are probed, by address: whether the last probe
/// completed a session. Keyed by address because a process (the tests) may run several gateways.
static LIVE: Mutex<Vec<(SocketAddr, Arc<AtomicBool>)>> = Mutex::new(Vec::new());

/// Probes the broker on `addr` every `every` on a thread of its own (for the life of the
/// process, like the broker): a failed probe logs one ERROR per outage and makes [`unready`]
/// name the broker until a probe succeeds again.
pub fn watch(addr: SocketAddr, password: Arc<str>, every: Duration) -> std::io::Result<()> {
    let live = Arc::new(AtomicBool::new(true));
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((addr, live.clone()));
    std::thread::Builder::new()
        .name("palmgate-mqtt-probe".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let probe =
                    mqtt_handshake(addr, b"palmgate-liveness-probe", &password, PROBE_TIMEOUT);
                let was = live.swap(probe.is_ok(), Ordering::Relaxed);
                match probe {
                    Err(e) if was => {
                        metrics::counter!("palmgate_mqtt_embedded_broker_outages_total")
                            .increment(1);
                        tracing::error!(%addr, error = %e,
                            "the embedded MQTT broker does not complete an MQTT session: readers \
                             cannot connect; /readyz answers 503 until it does (restart the \
                             gateway if it stays so)");
                    }
                    Ok(()) if !was => {
                        tracing::info!(%addr, "the embedded MQTT broker accepts sessions again");
                    }
                    _ => {}
                }
            }
        })
        .map(drop)
}

/// Why readers cannot use the embedded broker `mqtt` names (its last probe failed), for
/// `/readyz`; `None` with an external broker (`mqtt.url`) or a broker not probed.
pub fn unready(mqtt: &crate::config::MqttConfig) -> Option<String> {
    if mqtt.url.is_some() {
        return None;
    }
    let addr = mqtt.embedded.listen;
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let down = live
        .iter()
        .any(|(a, l)| *a == addr && !l.load(Ordering::Relaxed));
    down.then(|| format!("the embedded MQTT broker on {addr} does not accept MQTT sessions"))
}

/// A whole MQTT 3.1.1 session as client `id` (with `password`, user name `palmgate`, when it
/// is not empty): CONNECT, CONNACK (accepted), PINGREQ, PINGRESP, then the TCP connection is
/// closed. rumqttd logs an ERROR for a bare TCP connect that hangs up and ("router-drop") for a
/// DISCONNECT packet; a close after a session only an INFO.
fn mqtt_handshake(
    addr: SocketAddr,
    id: &[u8],
    password: &str,
    timeout: Duration,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let fail =
        |what: &str, e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"));
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| fail("TCP connect", e))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(&connect_packet(id, password))
        .map_err(|e| fail("sending CONNECT", e))?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack)
        .map_err(|e| fail("waiting for CONNACK", e))?;
    if connack != [0x20, 0x02, 0x00, 0x00] {
        return Err(std::io::Error::other(format!(
            "the broker did not accept the session (CONNACK {connack:02x?})"
        )));
    }
    s.write_all(&[0xC0, 0x00])
        .map_err(|e| fail("sending PINGREQ", e))?;
    let mut pingresp = [0u8; 2];
    s.read_exact(&mut pingresp)
        .map_err(|e| fail("waiting for PINGRESP", e))?;
    if pingresp != [0xD0, 0x00] {
        return Err(std::io::Error::other(format!(
            "the broker answered PINGREQ with {pingresp:02x?}"
        )));
    }
    Ok(())
}

/// An MQTT 3.1.1 CONNECT for client `id`: clean session, keep-alive 60 s, and the user name
/// `palmgate` with `password` when it is not empty.
fn connect_packet(id: &[u8], password: &str) -> Vec<u8> {
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    // Protocol "MQTT", level 4, flags (clean session; user name and password), keep-alive 60.
    let flags = if password.is_empty() { 0x02 } else { 0xC2 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
    field(&mut body, id);
    if !password.is_empty() {
        field(&mut body, b"palmgate");
        field(&mut body, password.as_bytes());
    }
    // Fixed header: CONNECT, then the remaining length as MQTT's variable-length integer.
    let mut packet = vec![0x10];
    let mut n = body.len();
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        packet.push(if n > 0 { byte | 0x80 } else { byte });
        if n == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A stand-in broker on a real port: while `up`, it answers CONNECT with CONNACK and PINGREQ
    /// with PINGRESP; otherwise it closes every connection unanswered (as rumqttd did once its
    /// lock was poisoned).
    fn fake_broker(up: Arc<AtomicBool>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("local addr");
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                if !up.load(Ordering::Relaxed) {
                    continue;
                }
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf);
                let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]);
                let _ = s.read(&mut buf);
                let _ = s.write_all(&[0xD0, 0x00]);
            }
        });
        addr
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(std::time::Instant::now() < end, "{what} within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn readiness_names_the_embedded_broker_while_its_probe_fails() {
        let up = Arc::new(AtomicBool::new(true));
        let addr = fake_broker(up.clone());
        let mut mqtt = crate::config::Config::defaults().mqtt;
        mqtt.url = None;
        mqtt.embedded.listen = addr;
        assert_eq!(unready(&mqtt), None, "a broker not probed yet");
        watch(addr, "".into(), Duration::from_millis(50)).expect("probe thread");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(unready(&mqtt), None, "the broker answers");

        up.store(false, Ordering::Relaxed);
        wait_until("the failed probe is seen", || unready(&mqtt).is_some());
        let why = unready(&mqtt).unwrap_or_default();
        assert!(
            why.contains("embedded MQTT broker") && why.contains(&addr.to_string()),
            "{why}"
        );
        // An external broker is not the embedded one's business.
        let mut external = mqtt.clone();
        external.url = Some(format!("mqtt://{addr}"));
        assert_eq!(unready(&external), None);

        up.store(true, Ordering::Relaxed);
        wait_until("the broker is ready again", || unready(&mqtt).is_none());
    }

    /// With a password, the built-in broker takes only clients that give it (any user name):
    /// none or a wrong one is disconnected before a session starts, and counted; the right one
    /// gets a session. The CONNECT the probe writes is valid MQTT with a long password too (its
    /// remaining length takes two bytes).
    #[test]
    fn a_password_keeps_out_clients_without_it() {
        let pw = "s3cret-Pässwort-".repeat(10);
        let addr = start_embedded("127.0.0.1:0".parse().unwrap(), &pw).expect("broker");
        let t = Duration::from_secs(2);
        assert!(mqtt_handshake(addr, b"no-password", "", t).is_err());
        assert!(mqtt_handshake(addr, b"wrong", "s3cret", t).is_err());
        mqtt_handshake(addr, b"right", &pw, t).expect("the right password gets a session");
        // Without a password set, anyone gets one (as before).
        let open = start_embedded("127.0.0.1:0".parse().unwrap(), "").expect("broker");
        mqtt_handshake(open, b"anyone", "", t).expect("a session");
    }
}
