//! The gateway's MQTT client (rumqttc): persistent session, QoS 1, manual acknowledgement,
//! reconnection with backoff, re-subscription on every connection, and door scans of the
//! backlog a reconnection delivers dropped.

use super::acks::{self, Ticket};
use super::protocol::{self, TopicKind};
use crate::app::App;
use crate::core::{ReaderCommand, ReaderId};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("invalid MQTT URL {0:?}: {1}")]
    Url(String, String),
    #[error("mqtt.ca_file {0}: {1}")]
    Tls(String, String),
}

/// The TLS transport of an `mqtts://` connection (the server's client and simulated readers):
/// with `ca_file` (`mqtt.ca_file`, PEM), the broker's certificate must chain to one of the CA
/// certificates in that file, and only those; without it, to the system's trusted roots.
pub fn tls_transport(ca_file: Option<&Path>) -> Result<Transport, MqttError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let Some(path) = ca_file else {
        return Ok(Transport::tls_with_default_config());
    };
    let bad = |m: String| MqttError::Tls(path.display().to_string(), m);
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no PEM certificate".into()));
    }
    // The provider is named, so a second one in the tree cannot make rustls panic.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )))
}

/// Host, port and TLS from `mqtt://host:port` / `mqtts://host:port`.
pub fn parse_url(url: &str) -> Result<(String, u16, bool), MqttError> {
    // The URL may carry the broker password: never in an error.
    let bad = |m: &str| MqttError::Url(crate::config::redact_url(url), m.to_string());
    let u = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    let tls = match u.scheme() {
        "mqtt" => false,
        "mqtts" => true,
        _ => return Err(bad("scheme must be mqtt or mqtts")),
    };
    let host = u.host_str().ok_or_else(|| bad("no host"))?.to_string();
    let port = u.port().unwrap_or(if tls { 8883 } else { 1883 });
    Ok((host, port, tls))
}

/// The user name and password of `mqtt://user:password@host` (percent-decoded), for brokers
/// that refuse anonymous clients.
pub fn credentials(url: &str) -> Option<(String, String)> {
    let u = reqwest::Url::parse(url).ok()?;
    if u.username().is_empty() {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    Some((
        decode(u.username()),
        decode(u.password().unwrap_or_default()),
    ))
}

/// The largest packet taken from the broker (see `set_max_packet_size` below).
const INCOMING_MAX: usize = 16 * 1024 * 1024;

// A message the embedded broker lets through reaches the parser, and one over the parser's
// limit gets through the embedded broker to be rejected as `too_large` (SPEC 5).
const _: () = assert!(
    INCOMING_MAX > super::broker::MAX_PACKET
        && super::broker::MAX_PACKET > protocol::MAX_PAYLOAD + 1024
);

/// A connection that ends sooner than this after it was accepted does not reset the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(5);

/// Connects to `url` and runs the reader protocol until the returned task is aborted.
pub fn spawn(
    app: Arc<App>,
    url: &str,
    mut commands: mpsc::UnboundedReceiver<(ReaderId, ReaderCommand)>,
) -> Result<JoinHandle<()>, MqttError> {
    let (host, port, tls) = parse_url(url)?;
    let client_id = app.keys.instance_name("palmgate");
    let mark_topic = format!("{}/gateway/{client_id}/mark", app.config.mqtt.topic_prefix);
    let mut opts = MqttOptions::new(client_id, host, port);
    if let Some((user, password)) = credentials(url) {
        opts.set_credentials(user, password);
    }
    opts.set_keep_alive(Duration::from_secs(10));
    // A persistent session: an external broker redelivers what a crash left unacknowledged
    // (an upstream trigger, an enrollment capture) and queues what readers send while the
    // gateway is away. That backlog also holds door scans made while it was away, which must
    // not open a door now (the person has walked away): see `Backlog`.
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    // Incoming: far above what any broker palmgate ships lets through (the embedded one 1 MiB,
    // the shipped Mosquitto configuration 256 KiB), so that an oversized message reaches the
    // parser, is rejected and counted, and is acknowledged. A
    // packet over the client's own limit drops the connection before it can be acknowledged,
    // and a broker that redelivers it after every reconnect would cut the gateway off from
    // every reader.
    opts.set_max_packet_size(INCOMING_MAX, 512 * 1024);
    if tls {
        opts.set_transport(tls_transport(app.config.mqtt.ca_file.as_deref())?);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    // Small packets go out at once: with Nagle's algorithm on, a publish written while an
    // earlier one is unacknowledged waits for the peer's delayed ACK (40 ms on Linux).
    eventloop.network_options.set_tcp_nodelay(true);
    let prefix = app.config.mqtt.topic_prefix.clone();
    // Each message with whether it came in the backlog of a resumed session (see `Backlog`),
    // and its place in the acknowledgement order.
    let (inbound_tx, mut inbound_rx) = mpsc::channel::<(Publish, bool, Option<Ticket>)>(1024);
    // Acknowledgements go out in the order the messages came, by one task (`acks`).
    let (mut receipts, acker) = acks::start(client.clone());
    let acker = tokio::spawn(acker);
    let in_acks = receipts.acks().clone();

    // Event loop: connection, reconnection with backoff, re-subscription.
    let sub_client = client.clone();
    let sub_prefix = prefix.clone();
    // Not connected until the first ConnAck: no reader is offered or armed before then.
    app.mqtt_up
        .store(false, std::sync::atomic::Ordering::Relaxed);
    metrics::gauge!("palmgate_mqtt_connected").set(0.0);
    let link_app = app.clone();
    let poller = tokio::spawn(async move {
        let app = link_app;
        let mut backoff = Duration::from_millis(200);
        let mut connected_at: Option<tokio::time::Instant> = None;
        let mut backlog = Backlog::default();
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    connected_at = Some(tokio::time::Instant::now());
                    tracing::info!(
                        session_present = ack.session_present,
                        "connected to the MQTT broker"
                    );
                    // The link is up. Readers' statuses are refreshed right after: the
                    // subscriptions below are made on every connection, and a SUBSCRIBE makes
                    // the broker send the retained statuses again.
                    set_link(&app, true);
                    for filter in protocol::reader_filters(&sub_prefix) {
                        if let Err(e) = sub_client.try_subscribe(filter, QoS::AtLeastOnce) {
                            tracing::error!(error = %e, "cannot subscribe");
                        }
                    }
                    // The one filter of an earlier build, which an external broker's
                    // persistent session may still hold: overlapping the ones above, it would
                    // make it (Mosquitto 2) deliver each reader message twice. (The embedded
                    // broker's sessions live no longer than this process.)
                    if ack.session_present && app.config.mqtt.url.is_some() {
                        let filter = protocol::legacy_filter(&sub_prefix);
                        if let Err(e) = sub_client.try_unsubscribe(filter) {
                            tracing::warn!(error = %e, "cannot unsubscribe");
                        }
                    }
                    if let Err(e) = sub_client.try_subscribe(&mark_topic, QoS::AtLeastOnce) {
                        tracing::error!(error = %e, "cannot subscribe");
                    }
                    if ack.session_present {
                        let nonce = backlog.start();
                        if let Err(e) =
                            sub_client.try_publish(&mark_topic, QoS::AtLeastOnce, false, nonce)
                        {
                            tracing::error!(error = %e, "cannot mark the end of the backlog");
                            backlog.end();
                        }
                    } else {
                        backlog.end();
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == mark_topic => {
                    if backlog.is_mark(&p.payload) {
                        tracing::info!("the resumed session's backlog is delivered");
                        backlog.end();
                    }
                    // After the backlog's messages, which may still be in the inbound queue.
                    let ticket = receipts.received(&p);
                    receipts.acks().done(ticket);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let ticket = receipts.received(&p);
                    if inbound_tx
                        .send((p, backlog.active(), ticket))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                // Every keep-alive: the gauge again, in case it was set before the metrics
                // recorder was installed (the first `/metrics`).
                Ok(Event::Incoming(Packet::PingResp)) => {
                    metrics::gauge!("palmgate_mqtt_connected").set(1.0);
                }
                Ok(_) => {}
                Err(e) => {
                    // No acknowledgement of this connection's messages may go out on the next
                    // one: the broker delivers them again there, under new packet ids (rumqttd
                    // numbers them afresh and drops a client whose acknowledgement matches
                    // none). After `lost` none is queued; the event loop dropped those queued
                    // when the connection failed (its own `clean`), and `clean` again drops any
                    // queued in between. (Not after a failed attempt to connect: there was no
                    // `clean`, and what is queued waits for the next connection.)
                    receipts.lost();
                    if connected_at.is_some() {
                        eventloop.clean();
                    }
                    // A connection that lived a while starts the backoff again; one that the
                    // broker or a bad message ends right after it was accepted keeps growing it.
                    if connected_at
                        .take()
                        .is_some_and(|t| t.elapsed() >= STABLE_AFTER)
                    {
                        backoff = Duration::from_millis(200);
                    }
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection lost");
                    metrics::counter!("palmgate_mqtt_disconnects_total").increment(1);
                    set_link(&app, false);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    });

    // Inbound: one message at a time, acknowledged once the app has handled it (in the order
    // the messages came: `acks`).
    let in_app = app.clone();
    let in_prefix = prefix.clone();
    let inbound = tokio::spawn(async move {
        while let Some((p, stale, ticket)) = inbound_rx.recv().await {
            match handle(&in_app, &in_prefix, &p, stale).await {
                Handled::Ack => in_acks.done(ticket),
                // An upstream trigger: acknowledged once its remote call's outcome is recorded
                // (or given up), so a crash before that leaves it to the broker to redeliver.
                Handled::AckWhenDone(done) => {
                    in_acks.held(ticket);
                    let acks = in_acks.clone();
                    tokio::spawn(async move {
                        let _ = done.await;
                        acks.done(ticket);
                    });
                }
            }
        }
    });

    // Outbound: reader commands from the core's effects.
    let out_app = app.clone();
    let outbound = tokio::spawn(async move {
        while let Some((reader_id, command)) = commands.recv().await {
            let payload = command_payload(&out_app, &command);
            let topic = protocol::cmd_topic(&prefix, &reader_id);
            if let Err(e) = client
                .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
                .await
            {
                tracing::error!(error = %e, reader = %reader_id, "cannot publish a reader command");
            }
        }
    });

    Ok(tokio::spawn(async move {
        let _guard = AbortOnDrop(vec![poller, inbound, outbound, acker]);
        std::future::pending::<()>().await;
    }))
}

/// Records whether the gateway's connection to the broker is up (`App::mqtt_up`, the
/// `palmgate_mqtt_connected` gauge). While it is down, readers' last statuses say nothing: a
/// reader cannot hear a command nor send a scan. Sessions already armed keep waiting (their
/// TTL bounds them): the command and a scan the reader made are QoS 1 in persistent sessions,
/// delivered when the broker is back.
fn set_link(app: &App, up: bool) {
    use std::sync::atomic::Ordering;
    metrics::gauge!("palmgate_mqtt_connected").set(if up { 1.0 } else { 0.0 });
    let was = app.mqtt_up.swap(up, Ordering::Relaxed);
    if was && !up {
        tracing::error!(
            "the MQTT broker is unreachable: no reader is offered or armed until the gateway \
             reconnects"
        );
    }
}

/// The backlog a resumed persistent session delivers: what readers sent while the gateway was
/// away (stopped, restarting, cut off), queued by the broker and delivered on reconnection
/// ahead of anything sent after it. A capture carries no time, so the backlog is told from
/// fresh messages by a mark: on a ConnAck with `session_present`, the gateway publishes a nonce
/// to its own `<prefix>/gateway/<client id>/mark` topic; the broker queues it behind the
/// backlog, so everything delivered before it came back is the backlog. A door scan in it
/// (a session-less capture, or a capture for a kiosk's site session, which decides a door
/// too) is dropped (`handle`): the person has walked away, and the door must not open for
/// whoever stands there now. A fresh scan sent in the few milliseconds before the mark is
/// dropped too (the person scans again): never the other way round. If the mark does not
/// come back within `BACKLOG_MAX`, scans are decided again rather than refused for good.
#[derive(Default)]
struct Backlog {
    /// The nonce of the mark awaited, and since when.
    mark: Option<(String, tokio::time::Instant)>,
    marks: u64,
}

/// How long the gateway waits for its mark before it decides door scans again.
const BACKLOG_MAX: Duration = Duration::from_secs(30);

impl Backlog {
    fn start(&mut self) -> String {
        self.marks += 1;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let nonce = format!("{}-{nanos}-{}", std::process::id(), self.marks);
        self.mark = Some((nonce.clone(), tokio::time::Instant::now()));
        nonce
    }
    fn end(&mut self) {
        self.mark = None;
    }
    /// True for the mark awaited (a mark of an earlier connection may come back in a backlog).
    fn is_mark(&self, payload: &[u8]) -> bool {
        self.mark
            .as_ref()
            .is_some_and(|(n, _)| n.as_bytes() == payload)
    }
    fn active(&mut self) -> bool {
        match &self.mark {
            Some((_, since)) if since.elapsed() < BACKLOG_MAX => true,
            Some(_) => {
                tracing::warn!("the backlog mark did not come back: deciding door scans again");
                self.mark = None;
                false
            }
            None => false,
        }
    }
}

struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// What to do about a message's acknowledgement.
enum Handled {
    /// Acknowledge it now.
    Ack,
    /// Acknowledge it when this resolves (its sender sent or dropped).
    AckWhenDone(tokio::sync::oneshot::Receiver<()>),
}

/// Handles one message, then it may be acknowledged — always, once handled. A message
/// whose events could not be written (the log is failing, or too much contention) is dropped,
/// logged and counted, not left unacknowledged: MQTT would not bring it back before the next
/// reconnection — and then as a stale scan that could open a door long after the person left —
/// while every unacknowledged message holds a slot of the broker's in-flight window, and a
/// full window stops every reader. A crash mid-handling still leaves it unacknowledged, so an
/// external broker redelivers it to the restarted server — unless it is a door scan, which
/// the backlog drops (`stale`). An upstream trigger is handled
/// when the remote's answer to it is recorded, which the MQTT loop does not wait for
/// (`app::upstream`).
async fn handle(app: &App, prefix: &str, p: &Publish, stale: bool) -> Handled {
    if protocol::is_cmd_topic(prefix, &p.topic) {
        return Handled::Ack; // a command of the gateway's, back through its own subscription
    }
    let (reader, kind) = match protocol::parse_topic(prefix, &p.topic) {
        Ok(t) => t,
        Err(e) => {
            reject(app, &e, None);
            return Handled::Ack;
        }
    };
    if kind == TopicKind::Status && p.payload.is_empty() {
        return Handled::Ack; // a cleared retained status
    }
    // A retained capture or trigger, replayed by the broker on a new subscription: it would be
    // decided again once its id has left the dedupe window.
    if let Err(e) = protocol::check_retain(kind, p.retain) {
        reject(app, &e, Some(&reader.0));
        return Handled::Ack;
    }
    let msg = match protocol::parse(kind, &p.payload, app.config.matching.dim) {
        Ok(m) => m,
        Err(e) => {
            reject(app, &e, Some(&reader.0));
            return Handled::Ack;
        }
    };
    // A door scan from the backlog of a resumed session: dropped, logged and counted; the
    // reader is told nothing, as for a rejected capture. One already handled (decided before
    // the connection was lost, its acknowledgement still waiting behind a held one) is a
    // redelivery: ignored below as such, not counted as a scan the person must make again.
    if stale
        && let protocol::Inbound::Capture(c) = &msg
        && !already_handled(app, &reader, &c.capture_id)
        && decides_a_door(app, c)
    {
        tracing::warn!(reader = %reader, capture = %c.capture_id, "door scan made while the gateway was away dropped (the person must scan again)");
        metrics::counter!("palmgate_mqtt_dropped_total", "reason" => "stale").increment(1);
        return Handled::Ack;
    }
    if let protocol::Inbound::Trigger { trigger_id } = &msg
        && app.upstream.is_some()
    {
        let (done, when) = tokio::sync::oneshot::channel();
        app.upstream_trigger(reader, trigger_id.clone(), Some(done));
        return Handled::AckWhenDone(when);
    }
    match app.reader_message(reader.clone(), msg).await {
        Ok(_) => {}
        Err(crate::app::AppError::Rejected(r)) => {
            tracing::info!(reader = %reader, reason = %r, "reader message refused");
        }
        Err(e) => {
            tracing::error!(reader = %reader, error = %e, "reader message not recorded; dropped (the reader must scan again)");
            metrics::counter!("palmgate_mqtt_dropped_total", "reason" => "not_recorded")
                .increment(1);
        }
    }
    Handled::Ack
}

/// Whether `reader`'s capture `capture_id` was handled already (the duplicate memory).
fn already_handled(app: &App, reader: &ReaderId, capture_id: &str) -> bool {
    let key = (
        reader.clone(),
        crate::core::state::Seen::Capture(capture_id.to_string()),
    );
    app.read(|s| s.seen.contains(&key))
}

/// A session-less capture (a scan at a door), or one for a kiosk's site session (its door
/// decision follows when it completes at a door's reader).
fn decides_a_door(app: &App, c: &protocol::CaptureMsg) -> bool {
    match c.session.as_deref() {
        None => true,
        Some(token) => {
            let h = crate::app::secrets::hash_secret(token);
            app.read(|s| {
                s.session_by_token_hash(&h)
                    .is_some_and(|s| s.partner_id.is_none())
            })
        }
    }
}

/// Counts a rejected reader message, and logs it unless the rejections of the last minute
/// were already logged (`app::throttle`).
fn reject(app: &App, e: &protocol::ProtocolError, reader: Option<&str>) {
    metrics::counter!("palmgate_mqtt_rejected_total", "reason" => e.label()).increment(1);
    if let Some(left_out) = app.rejects_logged.admit(std::time::Instant::now()) {
        tracing::warn!(reader = reader.unwrap_or("?"), reason = %e, left_out_before = left_out, "malformed reader message rejected");
    }
}

/// The JSON a reader receives for `command` (tokens and URLs filled in here).
pub fn command_payload(app: &App, command: &ReaderCommand) -> serde_json::Value {
    match command {
        ReaderCommand::Capture {
            session_id,
            kind,
            language,
        } => protocol::capture_cmd(
            &app.keys.session_token(*session_id),
            kind.as_str(),
            language.code(),
        ),
        ReaderCommand::Show { session_id } => protocol::show_cmd(&format!(
            "{}/identify/{}",
            app.public_url,
            app.keys.session_token(*session_id)
        )),
        ReaderCommand::Retry { reason } => protocol::retry_cmd(reason.as_str()),
        ReaderCommand::ShowUrl { url } => protocol::show_cmd(url),
        ReaderCommand::NotIdentified { door, why } => {
            crate::app::upstream::not_identified_cmd(app, door.as_ref(), why)
        }
        ReaderCommand::Result {
            granted,
            door,
            reason,
            unopenable,
        } => {
            let lang = crate::core::Language::parse(&app.config.mqtt.reader_language)
                .unwrap_or(crate::core::Language::En);
            let c = crate::http::i18n::catalog(lang);
            // A grant at a door whose relay board is known to be down opens nothing (no pulse
            // is sent): the person is told so,
            // not welcomed at a door that stays locked. The verdict itself stands (the log and
            // the audit keep it). Judged by the core from the state it decided on.
            let message = match (*granted, *unopenable) {
                (true, false) => c.door_granted,
                (true, true) => c.door_unavailable,
                (false, _) => c.door_denied,
            };
            let mut v = serde_json::json!({
                "action": "result",
                "granted": granted,
                "door": door.as_str(),
                "message": message,
            });
            if let Some(r) = reason {
                v["reason"] = serde_json::Value::from(r.as_str());
            } else if *unopenable {
                v["reason"] = serde_json::Value::from("door_unavailable");
            }
            v
        }
    }
}
