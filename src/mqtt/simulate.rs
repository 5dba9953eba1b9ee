//! A simulated palm reader speaking SPEC 5, for demos, tests and benchmarks
//! (`palmgate reader simulate`).
//!
//! It publishes a retained `status` (with `{"online": false}` as its last will), then captures
//! of a synthetic palm ([`crate::synthetic`]) — for a given session token, at a door, or in
//! answer to every `capture` command it receives (`follow`) — and reports the commands it gets.

use super::client::{parse_url, tls_transport};
use super::protocol::{self, TopicKind};
use crate::core::ReaderId;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, SubscribeFilter};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// What the simulated reader does.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub mqtt_url: String,
    pub topic_prefix: String,
    pub reader: ReaderId,
    pub palm: String,
    pub dim: usize,
    pub quality: f64,
    pub liveness: bool,
    /// Seed of the first scan's noise (each later scan adds 1).
    pub seed: u64,
}

/// A connected simulated reader.
pub struct SimReader {
    opts: SimOptions,
    client: AsyncClient,
    commands: mpsc::UnboundedReceiver<Value>,
    scans: u64,
    task: tokio::task::JoinHandle<()>,
    /// The session token it last scanned for or was armed for: a `retry` is answered for it.
    session: Option<String>,
    /// Another client already said this reader was online when it connected (see `close`).
    shared: Arc<AtomicBool>,
}

impl Drop for SimReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{0}")]
    Url(#[from] super::client::MqttError),
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error("the broker refused the connection ({0})")]
    Refused(String),
    #[error("no connection to the broker within 10 s (last error: {0})")]
    Timeout(String),
}

/// The retained status a simulated reader publishes on connecting.
fn online_status() -> Value {
    json!({"online": true, "model": "palmgate-sim", "firmware": env!("CARGO_PKG_VERSION")})
}

impl SimReader {
    /// Connects, subscribes to its `cmd` topic and publishes `{"online": true}` (retained).
    pub async fn connect(opts: SimOptions) -> Result<SimReader, SimError> {
        Self::connect_with_ca(opts, None).await
    }

    /// As [`SimReader::connect`]; an `mqtts://` broker's certificate must chain to a CA in
    /// `ca_file` (PEM, `mqtt.ca_file`) when one is given.
    pub async fn connect_with_ca(
        opts: SimOptions,
        ca_file: Option<&Path>,
    ) -> Result<SimReader, SimError> {
        let (host, port, tls) = parse_url(&opts.mqtt_url)?;
        let status = protocol::reader_topic(&opts.topic_prefix, &opts.reader, TopicKind::Status);
        // A client id of its own per connection: a second simulator of the same reader id (the
        // CLI beside the demo's own) must not take the other's connection over, which the
        // broker answers by dropping the older one (its last will then marks the reader
        // offline).
        let mut nonce = [0u8; 4];
        getrandom::fill(&mut nonce).map_err(|e| SimError::Mqtt(e.to_string()))?;
        let mut mo = MqttOptions::new(
            format!("sim-{}-{}", opts.reader, hex::encode(nonce)),
            host,
            port,
        );
        if let Some((user, password)) = super::client::credentials(&opts.mqtt_url) {
            mo.set_credentials(user, password);
        }
        mo.set_keep_alive(Duration::from_secs(5));
        mo.set_last_will(LastWill::new(
            status.clone(),
            json!({"online": false}).to_string(),
            QoS::AtLeastOnce,
            true,
        ));
        if tls {
            mo.set_transport(tls_transport(ca_file)?);
        }
        let (client, mut eventloop) = AsyncClient::new(mo, 64);
        // As the server's client does (`mqtt::client`): no 40 ms Nagle/delayed-ACK stalls.
        eventloop.network_options.set_tcp_nodelay(true);
        let (tx, commands) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), SimError>>();
        let last_error = Arc::new(std::sync::Mutex::new(String::from("none")));
        let last_error_seen = last_error.clone();
        let cmd_topic = protocol::cmd_topic(&opts.topic_prefix, &opts.reader);
        let sub = client.clone();
        let online = online_status();
        let shared = Arc::new(AtomicBool::new(false));
        let shared_seen = shared.clone();
        let (probed_tx, mut probed_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut connected_before = false;
            let mut closing = false;
            // Until its own `online` comes back live: a retained status saying `online` is
            // another client speaking for this reader id (the demo's own simulated reader).
            let mut probing = true;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        // Both in one SUBSCRIBE at first: its one SUBACK comes with the status
                        // retained then, before this reader's own `online` is published
                        // (`connect` waits for it). Apart, the own `online` could overtake the
                        // status subscription and come back as if retained by another client,
                        // as rumqttd reads retained messages when it first serves a filter.
                        let mut filters =
                            vec![SubscribeFilter::new(cmd_topic.clone(), QoS::AtLeastOnce)];
                        if !connected_before {
                            filters.push(SubscribeFilter::new(status.clone(), QoS::AtLeastOnce));
                        }
                        let _ = sub.try_subscribe_many(filters);
                        // A reconnection says `online` again: the last will of the dropped
                        // connection has left `{"online": false}` retained meanwhile.
                        if connected_before {
                            let _ = sub.try_publish(
                                status.clone(),
                                QoS::AtLeastOnce,
                                true,
                                online.to_string(),
                            );
                        }
                        connected_before = true;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(Ok(()));
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == status => {
                        if !p.retain {
                            if probing {
                                let _ = probed_tx.send(());
                            }
                            probing = false;
                        } else if probing
                            && serde_json::from_slice::<Value>(&p.payload)
                                .is_ok_and(|v| v["online"] == true)
                        {
                            shared_seen.store(true, Ordering::Relaxed);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
                            let _ = tx.send(v);
                        }
                    }
                    // `close`: once the DISCONNECT is out, the connection ends cleanly (no will)
                    // and is not made again.
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => closing = true,
                    Ok(_) => {}
                    Err(_) if closing => break,
                    // Refused by the broker before ever connecting (a wrong password, with a
                    // broker that answers it): retrying would not change the answer.
                    Err(rumqttc::ConnectionError::ConnectionRefused(code)) if !connected_before => {
                        let _ = ready_tx.send(Err(SimError::Refused(format!("{code:?}"))));
                        break;
                    }
                    Err(e) => {
                        if !connected_before {
                            let mut said = e.to_string();
                            // What the built-in broker does to a wrong password (no CONNACK).
                            if said.contains("closed by peer") {
                                said.push_str(
                                    "; the broker may be refusing the user name or password",
                                );
                            }
                            *last_error_seen.lock().unwrap_or_else(|p| p.into_inner()) = said;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                }
            }
        });
        // Not connected in time, or refused: the task stops (it would go on trying).
        let ready = match tokio::time::timeout(Duration::from_secs(10), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => Ok(()),
            Ok(Some(Err(e))) => Err(e),
            Ok(None) | Err(_) => Err(SimError::Timeout(
                last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            )),
        };
        if let Err(e) = ready {
            task.abort();
            return Err(e);
        }
        let r = SimReader {
            opts,
            client,
            commands,
            scans: 0,
            task,
            session: None,
            shared,
        };
        r.publish(TopicKind::Status, online_status(), true).await?;
        // Its own `online` back: whatever status was retained before has been seen (`close`).
        let _ = tokio::time::timeout(Duration::from_secs(2), probed_rx.recv()).await;
        Ok(r)
    }

    /// Ends its run: says `{"online": false}` (retained) unless another client already spoke
    /// for this reader id when it connected (the demo's own simulated reader, which stays
    /// online), then leaves with a DISCONNECT, so its last will is not published either. Waits
    /// up to 1 s for the packets to go out.
    pub async fn close(self) {
        if !self.shared.load(Ordering::Relaxed) {
            let _ = self
                .publish(TopicKind::Status, json!({"online": false}), true)
                .await;
        }
        if self.client.disconnect().await.is_ok() {
            let end = tokio::time::Instant::now() + Duration::from_secs(1);
            while !self.task.is_finished() && tokio::time::Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    async fn publish(&self, kind: TopicKind, v: Value, retain: bool) -> Result<(), SimError> {
        let topic = protocol::reader_topic(&self.opts.topic_prefix, &self.opts.reader, kind);
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, v.to_string())
            .await
            .map_err(|e| SimError::Mqtt(e.to_string()))
    }

    /// A deterministic id for the current scan: distinct for every (reader, palm, seed, scan), a
    /// UUID as SPEC 5 writes it (version 8: derived from a hash, not random).
    fn scan_id(&self, kind: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [kind, &self.opts.reader.0, &self.opts.palm] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(self.opts.seed.to_le_bytes());
        h.update(self.scans.to_le_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.finalize()[..16]);
        uuid::Builder::from_custom_bytes(id).into_uuid().to_string()
    }

    /// Publishes a raw payload on one of this reader's topics (for malformed-input tests).
    pub async fn publish_raw(&self, kind: TopicKind, payload: Vec<u8>) -> Result<(), SimError> {
        let topic = protocol::reader_topic(&self.opts.topic_prefix, &self.opts.reader, kind);
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| SimError::Mqtt(e.to_string()))
    }

    /// The capture payload for the next scan of the palm (`session`: a token, or `None` at a door).
    pub fn next_capture(&mut self, session: Option<&str>) -> Value {
        let values =
            crate::synthetic::scan(&self.opts.palm, self.opts.dim, self.opts.seed + self.scans);
        self.scans += 1;
        json!({
            "capture_id": self.scan_id("capture"),
            "session": session,
            "template": protocol::encode_template(&values),
            "quality": self.opts.quality,
            "liveness": self.opts.liveness,
        })
    }

    /// Scans the palm for `session` (or at the door when `None`); returns the payload sent.
    pub async fn capture(&mut self, session: Option<&str>) -> Result<Value, SimError> {
        if let Some(t) = session {
            self.session = Some(t.to_string());
        }
        let v = self.next_capture(session);
        self.publish(TopicKind::Capture, v.clone(), false).await?;
        Ok(v)
    }

    /// Sends an already built capture payload again (a QoS 1 redelivery, say).
    pub async fn send_capture(&self, v: Value) -> Result<(), SimError> {
        self.publish(TopicKind::Capture, v, false).await
    }

    /// A hand at a kiosk: publishes a `trigger`.
    pub async fn trigger(&mut self) -> Result<(), SimError> {
        self.scans += 1;
        let id = self.scan_id("trigger");
        self.publish(TopicKind::Trigger, json!({"trigger_id": id}), false)
            .await
    }

    /// Publishes `{"online": false}` (retained), as the last will would.
    pub async fn go_offline(&self) -> Result<(), SimError> {
        self.publish(TopicKind::Status, json!({"online": false}), true)
            .await
    }

    /// Changes the quality the next captures report.
    /// Another person's palm on the same reader (the demo's virtual reader panel).
    pub fn set_palm(&mut self, palm: &str) {
        self.opts.palm = palm.to_string();
    }

    pub fn set_quality(&mut self, q: f64) {
        self.opts.quality = q;
    }

    /// The next command received within `timeout`.
    pub async fn next_command(&mut self, timeout: Duration) -> Option<Value> {
        tokio::time::timeout(timeout, self.commands.recv())
            .await
            .ok()
            .flatten()
    }

    /// Answers every `capture` command with a scan, and every `retry` with another scan, for
    /// `duration`; prints each command as a JSON line when `print` is set.
    pub async fn follow(&mut self, duration: Duration, print: bool) -> Result<(), SimError> {
        let end = tokio::time::Instant::now() + duration;
        while let Some(cmd) = self.next_command(end - tokio::time::Instant::now()).await {
            self.answer(&cmd, print).await?;
        }
        Ok(())
    }

    /// Answers one command as [`SimReader::follow`] does.
    pub async fn answer(&mut self, cmd: &Value, print: bool) -> Result<(), SimError> {
        if print {
            println!("{cmd}");
        }
        match cmd.get("action").and_then(Value::as_str) {
            Some("capture") => {
                let session = cmd
                    .get("session")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                self.capture(session.as_deref()).await?;
            }
            Some("retry") if self.session.is_some() => {
                let session = self.session.clone();
                self.capture(session.as_deref()).await?;
            }
            _ => {}
        }
        Ok(())
    }
}
