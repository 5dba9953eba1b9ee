//! The `palmgate` command line: one function per subcommand.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use palmgate::config::{Config, LogFormat};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "palmgate",
    version,
    about = "Palm verification and door access-control gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Serve {
        /// Configuration file (TOML). Without it: embedded defaults and PALMGATE_* variables.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration without starting: its keys, its warnings, its TLS files and its
    /// site file (validated as a new activation would be). Exits 1 on any error.
    Check {
        /// Configuration file (TOML). Without it: embedded defaults and PALMGATE_* variables.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run everything on this machine with no hardware: embedded store and broker, a simulated
    /// relay board, simulated readers, a demo site, partner and people. Prints the URLs to open.
    Demo {
        /// Configuration file (TOML) to start from; the demo sets its own store, site and keys.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// HTTP address (default 127.0.0.1:8080; port 0 picks a free one).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Keep the demo's log, keys and site here (default: a new temporary directory).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Re-verify, export or replay the recorded log (SPEC 9).
    Audit {
        #[command(subcommand)]
        action: AuditCmd,
    },
    /// Run replay scenarios (files or directories of *.toml) on a virtual clock.
    /// Prints one line per scenario and `N passed, N failed`; exits 1 on any failure.
    Replay {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Simulated palm readers.
    Reader {
        #[command(subcommand)]
        action: ReaderCmd,
    },
    /// Manage partners through the admin API of a running server.
    Partner {
        #[command(flatten)]
        target: AdminTarget,
        #[command(subcommand)]
        action: PartnerCmd,
    },
}

#[derive(clap::Args)]
struct AdminTarget {
    /// Configuration of the server to talk to (its http.listen / public_url and admin token).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Base URL of the server; overrides the config.
    #[arg(long, global = true)]
    server: Option<String>,
    /// Admin token; overrides the config.
    #[arg(
        long,
        global = true,
        env = "PALMGATE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Seconds to wait for the server's answer before giving up.
    #[arg(long, global = true, default_value_t = 30)]
    timeout: u64,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Walk the whole log: hash chain, event schema, every door decision re-derived.
    /// Exits 1 on any finding.
    Verify {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A head kept elsewhere, `POSITION:HASH` as an earlier verify printed it: the log
        /// must still hold that hash at that position (a re-sealed chain with its saved head
        /// rewritten, or a cut tail, no longer does). Repeatable.
        #[arg(long, value_name = "POSITION:HASH")]
        expect_head: Vec<String>,
        /// Every head named in a file (`-`: standard input) as `--expect-head POSITION:HASH`,
        /// as the gateway writes them to its journal at start-up, hourly and at stop:
        /// `journalctl -u palmgate -o cat | palmgate audit verify --expect-heads-from -`.
        #[arg(long, value_name = "FILE")]
        expect_heads_from: Option<PathBuf>,
    },
    /// Who went through which door, when, and why (door decisions).
    Export {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// From this instant (RFC 3339), inclusive; a plain date (YYYY-MM-DD) is that day's
        /// start in the site's time zone (the policy in force in the log; the `site` file's
        /// `timezone` when the log holds no policy).
        #[arg(long)]
        from: Option<String>,
        /// Until this instant (RFC 3339), exclusive; a plain date is that day's start, so
        /// `--from 2026-11-01 --to 2026-12-01` is November.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_parser = ["jsonl", "csv"], default_value = "jsonl")]
        format: String,
    },
    /// The past door decisions a new policy would decide differently.
    WhatIf {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The candidate site policy (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// From this instant (RFC 3339), inclusive; a plain date (YYYY-MM-DD) is that day's
        /// start in the candidate's time zone.
        #[arg(long)]
        from: Option<String>,
        /// Until this instant (RFC 3339), exclusive; a plain date is that day's start.
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Subcommand)]
enum ReaderCmd {
    /// Connect as reader ID and scan the synthetic palm NAME (SPEC 5).
    ///
    /// With --session URL, arm the reader for that hosted-page session as a person choosing it
    /// on the page does (`URL?reader=ID`) and scan when the server says `capture`; with
    /// --session TOKEN, scan for it at once (a session this reader is already armed for, or a
    /// kiosk's); with --door, scan at the reader's door; with --trigger, report a hand at a
    /// kiosk. In every case the reader then answers `capture` and `retry` commands with fresh
    /// scans for --wait seconds, printing each command it receives as a JSON line, and leaves
    /// the broker cleanly: it reports the reader offline (retained, which fails a session
    /// armed there), unless another client already spoke for that reader id when it connected
    /// (the demo's own reader stays online).
    Simulate {
        #[arg(long)]
        reader: String,
        #[arg(long)]
        palm: String,
        #[arg(long, conflicts_with_all = ["door", "trigger"])]
        session: Option<String>,
        #[arg(long, conflicts_with = "trigger")]
        door: bool,
        #[arg(long)]
        trigger: bool,
        /// Broker URL (mqtt:// or mqtts://); default: the config's broker.
        #[arg(long)]
        mqtt: Option<String>,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Reported capture quality (0–1).
        #[arg(long, default_value_t = 0.93)]
        quality: f64,
        /// Report a failed liveness check.
        #[arg(long)]
        spoof: bool,
        /// Seed of the scan noise (default: random).
        #[arg(long)]
        seed: Option<u64>,
        /// Seconds to keep answering commands.
        #[arg(long, default_value_t = 3)]
        wait: u64,
    },
}

#[derive(Subcommand)]
enum PartnerCmd {
    /// Create a partner; prints its API key once.
    Create {
        #[arg(long)]
        name: String,
    },
    /// List partners.
    List,
    /// Let a partner call the API again.
    Activate { id: String },
    /// Refuse a partner's calls with 403.
    Deactivate { id: String },
}

/// Ends the process with status 1 after printing `msg` (audit findings).
#[derive(Debug)]
struct Failed(String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failed {}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The KurrentDB client brings rustls's `ring` provider beside `aws-lc-rs`: with two compiled
    // in, rustls has no process default and a client built without naming one panics.
    #[cfg(feature = "kurrentdb")]
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| {
            rt.block_on(async {
                match cli.command {
                    Cmd::Serve { config } => serve(config).await,
                    Cmd::Demo {
                        config,
                        listen,
                        data,
                    } => demo(config, listen, data).await,
                    Cmd::Partner { target, action } => partner(target, action).await,
                    Cmd::Reader { action } => reader(action).await,
                    Cmd::Audit { action } => audit(action),
                    Cmd::Check { config } => check(config),
                    Cmd::Replay { paths } => replay(paths).await,
                }
            })
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Failed>().is_some() => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("palmgate: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `e` and its causes, each cause only when the text so far does not already hold it (many
/// errors print their source in their own message: `{e:#}` would say it twice).
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Colour codes in the log only on a terminal (stderr, where the log goes) and without a
/// non-empty `NO_COLOR` (<https://no-color.org>): a pipe, a file, `docker logs` or the journal
/// gets plain text.
fn log_colours(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(log_colours(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().finish().with(BrokerDisconnects).init(),
        LogFormat::Text => builder.finish().with(BrokerDisconnects).init(),
    }
}

/// Drops what rumqttd (the embedded broker) logs at ERROR for a client's ordinary
/// disconnection: `router-drop error=Recv(Disconnected)` when a client leaves, and
/// `no-connection id N is already gone` when it sent DISCONNECT and then closed its socket
/// (rumqttd's own comment calls that double disconnection normal). Every reader reconnecting
/// made an operator's `grep ERROR` of the journal cry wolf. Every other broker error stays.
struct BrokerDisconnects;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for BrokerDisconnects {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        let m = event.metadata();
        if *m.level() != tracing::Level::ERROR || !m.target().starts_with("rumqttd") {
            return true;
        }
        let mut text = FieldText(String::new());
        event.record(&mut text);
        !is_broker_disconnect(&text.0)
    }
}

/// An event's fields as `name=value` text.
struct FieldText(String);

impl tracing::field::Visit for FieldText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

/// Whether rumqttd's ERROR text (`FieldText`) is an ordinary disconnection.
fn is_broker_disconnect(text: &str) -> bool {
    (text.contains("router-drop") && text.contains("Disconnected"))
        || (text.contains("no-connection id") && text.contains("is already gone"))
}

/// Makes the process non-dumpable (`PR_SET_DUMPABLE` 0): no core dump, and no other process
/// of the same user may `ptrace` it or read its `/proc/<pid>/mem`. The memory holds clear
/// palm templates (the matcher index, captures being handled), which a dump or a memory read
/// would leak, erased ones included until overwritten (SPEC 8.3). Called by `serve` and `demo`
/// before any template is opened; systemd's `LimitCORE=0` (deploy/palmgate.service) adds the
/// same for core dumps. Returns whether it took effect.
fn forbid_core_dumps() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes integers only and touches no memory of ours.
        let rc = unsafe {
            libc::prctl(
                libc::PR_SET_DUMPABLE,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if rc == 0 {
            tracing::debug!("process is not dumpable: no core dumps, no same-user ptrace");
            true
        } else {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "prctl(PR_SET_DUMPABLE, 0) failed: a core dump of this process could hold palm templates"
            );
            false
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        tracing::debug!("no PR_SET_DUMPABLE on this system: core dumps are left to its limits");
        false
    }
}

async fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load_with_process_env(config.as_deref())?;
    init_logging(config.log.format);
    forbid_core_dumps();
    if config.admin.token.is_empty() && config.admin.token_sha256.is_empty() {
        tracing::warn!("admin.token is not set: the admin API refuses every call");
    }
    // Caught from here on: a SIGTERM during start-up stops the server cleanly once it runs
    // (before, one that came before the serve loop first waited for it killed the process,
    // skipping the relays' stop).
    let mut shutdown = Box::pin(shutdown_signal());
    // A signal while starting (a long fold, a store that waits) ends the start, as it did when
    // nothing caught it yet.
    let server = tokio::select! {
        started = palmgate::app::start(config) => started?,
        _ = &mut shutdown => {
            tracing::info!("stopped while starting");
            return Ok(());
        }
    };
    println!(
        "palmgate readers connect to {}",
        palmgate::config::redact_url(&server.mqtt)
    );
    // The one line scripts and tests read to find the server.
    println!(
        "palmgate listening on {} (public URL {})",
        server.listening_url(),
        server.public_url
    );
    std::io::stdout().flush().ok();
    tracing::info!(addr = %server.addr, "serving");
    #[cfg(unix)]
    {
        // SIGHUP re-reads and activates the site policy file.
        let app = server.app.clone();
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    match app.activate_site_file("sighup").await {
                        Ok(true) => tracing::info!("site policy reloaded"),
                        Ok(false) => tracing::warn!(
                            "SIGHUP: no site file to reload (`site` is not set); the policy in \
                             force, if any, stays"
                        ),
                        // Logged where it was found.
                        Err(_) => {}
                    }
                }
            });
        }
    }
    server.serve(shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn demo(
    config: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    data: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut config = Config::load_with_process_env(config.as_deref())?;
    if let Some(l) = listen {
        config.http.listen = l;
        // An error about it names the option, not where the config had it from.
        config
            .sources
            .insert("http.listen".into(), "--listen".into());
    }
    init_logging(config.log.format);
    forbid_core_dumps();
    let temporary = data.is_none();
    palmgate::demo::run(
        config,
        data,
        |s| {
            let key = match &s.api_key {
                Some(k) => format!("API key (demo partner \"{}\"): {k}", palmgate::demo::PARTNER_NAME),
                None => format!(
                    "API key: not shown ({} is missing or holds another key; see the warning above)",
                    s.data.join("demo-api-key").display()
                ),
            };
            println!(
                "palmgate demo is running at {url}\n\
                 \n  Operator dashboard  {url}/admin\n      admin token: {token}\n\
                 \n  Partner dashboard   {url}/dashboard\n      {key}\n\
                 \n  Pass API            {url}/v1  (OpenAPI: {url}/v1/openapi.json)\n\
                 \n  Webhook test receiver: {url}/demo/receiver\n\
                 \n  Simulated readers: {readers}, enrollment desk {desk} (MQTT {mqtt})\n\
                 \n  Try: open the operator dashboard, sign in with the token, and scan daniyar at the server room.\n\
                 \n  Data: {data}{removed} — Ctrl-C stops the demo.",
                url = s.url,
                token = s.admin_token,
                readers = palmgate::demo::DOOR_READERS.join(", "),
                desk = palmgate::demo::DESK_READER,
                mqtt = s.mqtt_shown,
                data = s.data.display(),
                removed = if temporary { " (removed when the demo stops; --data DIR keeps it)" } else { "" },
            );
            std::io::stdout().flush().ok();
        },
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// SIGTERM or Ctrl-C (SIGINT). The handlers are installed when this is called, not when the
/// future is first polled: a signal in between is not lost (nor, for SIGTERM, fatal).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut term), Some(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => tokio::signal::ctrl_c().await.unwrap_or(()),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        tokio::signal::ctrl_c().await.ok();
    }
}

/// `listen` as this machine reaches it: every address (`0.0.0.0`, `[::]`) is the loopback one.
fn local(mut listen: std::net::SocketAddr) -> std::net::SocketAddr {
    if listen.ip().is_unspecified() {
        listen.set_ip(match listen {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    listen
}

async fn partner(target: AdminTarget, action: PartnerCmd) -> anyhow::Result<()> {
    let config = Config::load_with_process_env(target.config.as_deref())?;
    let base = match target.server {
        Some(s) => s,
        // The certificate names the public host: TLS goes there.
        None if config.http.tls.is_some() && !config.http.public_url.is_empty() => {
            config.http.public_url.clone()
        }
        None if config.http.tls.is_some() => format!("https://{}", local(config.http.listen)),
        // Plain HTTP goes to the server's own listener, never out through the public URL (a
        // reverse proxy, split DNS) with the admin token.
        None => format!("http://{}", local(config.http.listen)),
    };
    let base = base.trim_end_matches('/').to_string();
    let token = target
        .token
        .filter(|t| !t.is_empty())
        .or_else(|| Some(config.admin.token.clone()).filter(|t| !t.is_empty()))
        .context("no admin token: pass --token, set PALMGATE_ADMIN_TOKEN or admin.token")?;
    // The certificates of the server's own chain file are trusted too (a self-signed one on
    // the gateway box, or a private CA's chain).
    // A server that takes the connection and never answers must not hang the command.
    let mut client =
        reqwest::Client::builder().timeout(std::time::Duration::from_secs(target.timeout.max(1)));
    if let Some(tls) = &config.http.tls {
        let pem = std::fs::read(&tls.cert)
            .with_context(|| format!("cannot read http.tls.cert {}", tls.cert.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("http.tls.cert {}", tls.cert.display()))?
        {
            client = client.add_root_certificate(cert);
        }
    }
    let client = client.build().context("cannot build the HTTP client")?;
    let (method, path, body) = match &action {
        PartnerCmd::Create { name } => (
            reqwest::Method::POST,
            "/admin/v1/partners".to_string(),
            Some(serde_json::json!({ "name": name })),
        ),
        PartnerCmd::List => (reqwest::Method::GET, "/admin/v1/partners".into(), None),
        PartnerCmd::Activate { id } => (
            reqwest::Method::POST,
            format!("/admin/v1/partners/{id}/activate"),
            None,
        ),
        PartnerCmd::Deactivate { id } => (
            reqwest::Method::POST,
            format!("/admin/v1/partners/{id}/deactivate"),
            None,
        ),
    };
    let mut req = client
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let status = resp.status();
    // Read as text first: a reverse proxy's 502 page or a wrong URL's 404 is not JSON, and the
    // error must still say which status came back and what the body began with.
    let text = resp
        .text()
        .await
        .with_context(|| format!("{status}: the server's answer could not be read"))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|_| {
        let head: String = text.chars().take(200).collect();
        let more = if text.chars().count() > 200 { "…" } else { "" };
        anyhow::anyhow!(
            "{status}: the server's answer is not JSON (is --server the palmgate address?): {:?}{more}",
            head
        )
    })?;
    if !status.is_success() {
        bail!(
            "{status}: {}",
            json.get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("no message")
        );
    }
    match action {
        PartnerCmd::List => {
            let list = json.as_array().cloned().unwrap_or_default();
            println!("{:<36}  {:<8}  {:<20}  name", "id", "active", "created_at");
            for p in list {
                println!(
                    "{:<36}  {:<8}  {:<20}  {}",
                    p["id"].as_str().unwrap_or(""),
                    p["active"].as_bool().unwrap_or(false),
                    p["created_at"].as_str().unwrap_or(""),
                    p["name"].as_str().unwrap_or("")
                );
            }
        }
        PartnerCmd::Create { .. } => {
            println!("id:      {}", json["id"].as_str().unwrap_or(""));
            println!("name:    {}", json["name"].as_str().unwrap_or(""));
            println!("api_key: {}", json["api_key"].as_str().unwrap_or(""));
            println!("(the API key is shown once; palmgate keeps only its hash)");
        }
        PartnerCmd::Activate { .. } | PartnerCmd::Deactivate { .. } => {
            println!(
                "{} active={}",
                json["id"].as_str().unwrap_or(""),
                json["active"].as_bool().unwrap_or(false)
            );
        }
    }
    Ok(())
}

async fn reader(action: ReaderCmd) -> anyhow::Result<()> {
    let ReaderCmd::Simulate {
        reader,
        palm,
        session,
        door,
        trigger,
        mqtt,
        config,
        quality,
        spoof,
        seed,
        wait,
    } = action;
    // What the gateway would refuse is refused here, by name: a reader id no topic can carry
    // fails as a broker client id, and a bad quality only shows in the server's log.
    anyhow::ensure!(
        palmgate::core::ReaderId::is_valid(&reader),
        "--reader {reader:?}: a reader id is 1–{} letters, digits or `-_.:` (it is a level of \
         the reader's MQTT topics)",
        palmgate::core::ReaderId::MAX_LEN
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&quality),
        "--quality {quality}: a capture's quality is a number from 0 to 1"
    );
    let config = Config::load_with_process_env(config.as_deref())?;
    let sim_reader = reader.clone();
    let mqtt_url = mqtt.or_else(|| config.mqtt.url.clone()).unwrap_or_else(|| {
        config
            .mqtt
            .embedded
            .url(config.mqtt.embedded.listen, "reader")
    });
    let seed = seed.unwrap_or_else(|| {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).ok();
        u64::from_le_bytes(b)
    });
    let mut sim = palmgate::mqtt::simulate::SimReader::connect_with_ca(
        palmgate::mqtt::simulate::SimOptions {
            mqtt_url: mqtt_url.clone(),
            topic_prefix: config.mqtt.topic_prefix.clone(),
            reader: palmgate::core::ReaderId(reader.clone()),
            palm,
            dim: config.matching.dim,
            quality,
            liveness: !spoof,
            seed,
        },
        config.mqtt.ca_file.as_deref(),
    )
    .await
    .with_context(|| {
        format!(
            "cannot connect to {}",
            palmgate::config::redact_url(&mqtt_url)
        )
    })?;
    match session.as_deref().map(|s| (s, arm_link(s, &sim_reader))) {
        // A link: the reader is armed for it as a person choosing it on the page does
        // (`?reader=ID`); the server's `capture` command then starts the scan. A capture
        // counts only from the reader its session is armed at.
        // Until the server has seen this reader online (its retained status reaches the server
        // a moment after the connection), the page cannot arm it: asked again until the
        // server's command comes, for up to 5 s (asked again, a page whose session holds the
        // reader already changes nothing).
        Some((link, Some(url))) => {
            let http = reqwest::Client::new();
            let end = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let resp = http
                    .get(url.clone())
                    .header("accept", "application/json")
                    .send()
                    .await
                    .with_context(|| format!("cannot open the session's page {link}"))?;
                if !resp.status().is_success() {
                    anyhow::bail!(
                        "the session's page answered {}: {}",
                        resp.status(),
                        resp.text().await.unwrap_or_default()
                    );
                }
                let wait = std::time::Duration::from_millis(700);
                if let Some(cmd) = sim.next_command(wait).await {
                    sim.answer(&cmd, true).await?;
                    break;
                }
                if tokio::time::Instant::now() >= end {
                    anyhow::bail!(
                        "the server did not arm reader {sim_reader} for this session within 5 s: \
                         is the reader busy with another session's page, or at a door?"
                    );
                }
            }
        }
        // A bare token: scanned for as it is (a kiosk's session shown to this reader, or one
        // a page has armed it for).
        Some((token, None)) => {
            sim.capture(Some(token)).await?;
        }
        None if door => {
            sim.capture(None).await?;
        }
        None if trigger => sim.trigger().await?,
        None => {}
    }
    let result = sim.follow(std::time::Duration::from_secs(wait), true).await;
    sim.close().await;
    result?;
    Ok(())
}

/// The page link `link` asking to arm `reader` (`?reader=ID`, replacing any reader it already
/// named; the rest of the query and the fragment dropped), or `None` when `link` is no URL (a
/// bare token).
fn arm_link(link: &str, reader: &str) -> Option<reqwest::Url> {
    let mut url = reqwest::Url::parse(link).ok()?;
    url.set_fragment(None);
    url.set_query(None);
    url.query_pairs_mut().append_pair("reader", reader);
    Some(url)
}

/// One end of an audit range (`--from`, `--to`).
type Bound = Option<chrono::DateTime<chrono::Utc>>;

/// `--from` and `--to`: each an RFC 3339 instant or a plain date (that day's start in the
/// zone `zone` gives, asked for only when a date is given), `from` not after `to` (an empty
/// range answered nothing and exit 0, as if nobody had gone through).
fn range(
    from: Option<String>,
    to: Option<String>,
    zone: impl FnOnce() -> anyhow::Result<chrono_tz::Tz>,
) -> anyhow::Result<(Bound, Bound)> {
    let is_date = |s: &Option<String>| s.as_deref().is_some_and(|s| plain_date(s).is_some());
    let tz = if is_date(&from) || is_date(&to) {
        Some(zone()?)
    } else {
        None
    };
    let (f, t) = (instant(from, "from", tz)?, instant(to, "to", tz)?);
    if let (Some(a), Some(b)) = (f, t)
        && a > b
    {
        bail!(
            "--from {} is after --to {}: the range is empty (--from is inclusive, --to exclusive)",
            a.to_rfc3339(),
            b.to_rfc3339()
        );
    }
    Ok((f, t))
}

fn instant(
    s: Option<String>,
    what: &str,
    tz: Option<chrono_tz::Tz>,
) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
    s.map(|s| {
        if let (Some(day), Some(tz)) = (plain_date(&s), tz) {
            return Ok(day_start(day, tz));
        }
        chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&chrono::Utc))
            .with_context(|| {
                format!(
                    "--{what} {s:?} is neither an RFC 3339 instant (2026-11-01T08:00:00+05:00) \
                     nor a date (2026-11-01)"
                )
            })
    })
    .transpose()
}

fn plain_date(s: &str) -> Option<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

/// The first instant of `day` in `tz`: its midnight, or the first minute after it that
/// exists when the clocks skip midnight.
fn day_start(day: chrono::NaiveDate, tz: chrono_tz::Tz) -> chrono::DateTime<chrono::Utc> {
    let midnight = day.and_time(chrono::NaiveTime::MIN);
    (0..=24 * 60)
        .find_map(|m| {
            (midnight + chrono::Duration::minutes(m))
                .and_local_timezone(tz)
                .earliest()
        })
        .map_or_else(|| midnight.and_utc(), |t| t.with_timezone(&chrono::Utc))
}

/// The site's time zone, from the `site` file named by the configuration.
fn site_zone(config: Option<&std::path::Path>) -> anyhow::Result<chrono_tz::Tz> {
    let config = Config::load_with_process_env(config)?;
    let path = &config.site;
    if path.as_os_str().is_empty() {
        bail!(
            "a date in --from/--to is read in the site's time zone, but no site file is \
             configured (key `site`); give RFC 3339 instants instead"
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "a date in --from/--to is read in the site's time zone, but the site file {} \
             (key `site`) cannot be read; give RFC 3339 instants instead",
            path.display()
        )
    })?;
    palmgate::core::policy::Policy::parse(&text)
        .map(|p| p.timezone)
        .map_err(|_| {
            anyhow::anyhow!(
                "a date in --from/--to is read in the site's time zone, but the site file {} \
                 (key `site`) is not valid (`palmgate check` says why); give RFC 3339 \
                 instants instead",
                path.display()
            )
        })
}

fn open_log(
    config: Option<&std::path::Path>,
) -> anyhow::Result<std::sync::Arc<dyn palmgate::store::EventStore>> {
    let config = Config::load_with_process_env(config)?;
    if config.store.url.is_some() {
        return Ok(palmgate::app::open_store(&config.store)?);
    }
    let path = &config.store.path;
    if !path.exists() {
        bail!("no event log at {}", path.display());
    }
    // Read-only: an audit writes nothing, not even the schema, to the file it is given.
    match palmgate::store::SqliteStore::open_read_only(path)? {
        Some(store) => Ok(std::sync::Arc::new(store)),
        None => bail!("{} is not a palmgate event log", path.display()),
    }
}

fn check(file: Option<PathBuf>) -> anyhow::Result<()> {
    let name = file
        .as_ref()
        .map_or("the embedded defaults".into(), |f| f.display().to_string());
    // Loading stops at the first wrong key: it is the one error said.
    let config = match Config::load_with_process_env(file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            println!("error: {e}");
            println!("{name}: 1 error(s) (the first wrong key; fix it and check again)");
            return Err(Failed("config check failed".into()).into());
        }
    };
    let found = palmgate::app::check_config(&config, chrono::Utc::now());
    for w in &found.warnings {
        println!("warning: {w}");
    }
    for e in &found.errors {
        println!("error: {e}");
    }
    if let Some(site) = &found.site {
        println!("{site}");
    }
    if !found.errors.is_empty() {
        println!("{name}: {} error(s)", found.errors.len());
        return Err(Failed("config check failed".into()).into());
    }
    println!("{name}: OK ({} warning(s))", found.warnings.len());
    Ok(())
}

fn audit(action: AuditCmd) -> anyhow::Result<()> {
    use palmgate::replay::audit;
    match action {
        AuditCmd::Verify {
            config,
            expect_head,
            expect_heads_from,
        } => {
            let mut heads = expect_head
                .iter()
                .map(|h| audit::parse_head(h))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            if let Some(path) = &expect_heads_from {
                // Journal exports may hold bytes that are not UTF-8 (other services' lines):
                // they are read as they are, never refused for it.
                let bytes = if path.as_os_str() == "-" {
                    let mut b = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut b)
                        .context("cannot read the heads from standard input")?;
                    b
                } else {
                    std::fs::read(path)
                        .with_context(|| format!("cannot read {}", path.display()))?
                };
                let text = String::from_utf8_lossy(&bytes);
                let found = audit::heads_in(&text);
                if found.is_empty() {
                    bail!(
                        "--expect-heads-from {}: no `--expect-head POSITION:HASH` in it (the \
                         gateway writes one at start-up, hourly and at stop)",
                        path.display()
                    );
                }
                println!("{} head(s) read from {}", found.len(), path.display());
                heads.extend(found);
            }
            let store = open_log(config.as_deref())?;
            let mut report = audit::verify(&*store)?;
            for head in heads {
                audit::check_expected_head(&*store, &mut report, head)?;
            }
            let loaded = Config::load_with_process_env(config.as_deref())?;
            // What the SQLite log acknowledged, from the mark beside it (outside its -wal).
            if loaded.store.url.is_none() {
                let at = palmgate::store::acked::path_beside(&loaded.store.path);
                match palmgate::store::acked::read(&at) {
                    Ok(Some(mark)) => audit::check_acknowledged(&*store, &mut report, mark)?,
                    Ok(None) => {}
                    Err(e) => println!("warning: {e}: not checked"),
                }
            }
            // Not the log's: the file the next start (or SIGHUP) activates. Said, not failed on.
            for p in palmgate::app::site_file_problems(&loaded, chrono::Utc::now()) {
                println!("warning: {p} (the log is not affected; `palmgate check` says more)");
            }
            for f in &report.findings {
                println!("position {}: {}", f.position, f.problem);
            }
            for w in &report.warnings {
                println!("warning: position {}: {}", w.position, w.problem);
            }
            if let Some((position, hash)) = &report.head {
                // What the chain cannot show by itself: events cut off the end.
                println!(
                    "head: position {position}, hash {hash} (keep it elsewhere: a later `audit \
                     verify --expect-head {position}:{hash}` fails on a log that no longer holds \
                     it)"
                );
            }
            println!(
                "{} events, {} door decisions re-derived: {}",
                report.events,
                report.decisions,
                if report.ok() {
                    "hash chain intact, every decision reproduced".to_string()
                } else {
                    format!("{} problem(s)", report.findings.len())
                }
            );
            if !report.ok() {
                return Err(Failed("audit found problems".into()).into());
            }
        }
        AuditCmd::Export {
            config,
            from,
            to,
            format,
        } => {
            let store = open_log(config.as_deref())?;
            // A plain date is read in the zone of the policy in force in the log (the site
            // file may say another, or be missing, when the audit runs elsewhere).
            let (from, to) = range(from, to, || match audit::zone_in_force(&*store)? {
                Some(tz) => Ok(tz),
                None => site_zone(config.as_deref()),
            })?;
            let text = audit::export(&*store, from, to, format == "csv")?;
            std::io::stdout().lock().write_all(text.as_bytes())?;
        }
        AuditCmd::WhatIf {
            config,
            policy,
            from,
            to,
        } => {
            let text = std::fs::read_to_string(&policy)
                .with_context(|| format!("cannot read {}", policy.display()))?;
            let candidate = palmgate::core::policy::Policy::parse(&text).map_err(|errs| {
                anyhow::anyhow!(
                    "{} is not a valid site policy:\n{}",
                    policy.display(),
                    errs.iter()
                        .map(|e| format!("  {e}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })?;
            let zone = candidate.timezone;
            let (from, to) = range(from, to, || Ok(zone))?;
            let store = open_log(config.as_deref())?;
            let found = audit::what_if(&*store, &candidate, from, to)?;
            for c in &found.changed {
                let now = c.now_text();
                println!("{}  now: {now}", c.row);
            }
            // Scans rejected `no_door` name no person: reported, not counted as changes (the
            // candidate's outcome for them is unknown), so the exit status stays 0 as for any
            // report.
            for r in &found.not_redecidable {
                println!(
                    "reader {}: {} scan(s) rejected as no_door in range; the candidate puts {} at \
                     door {}; they cannot be re-decided (no person was matched when they were \
                     rejected)",
                    r.reader.as_str().escape_debug(),
                    r.scans,
                    r.reader.as_str().escape_debug(),
                    r.door.as_str().escape_debug(),
                );
            }
            if let Some(u) = &found.unadmitted {
                let names: Vec<String> = u
                    .partners
                    .iter()
                    .map(|n| format!("{:?}", n.as_str()))
                    .collect();
                println!(
                    "{} door scan(s) in range matched nobody while partner(s) {} were not \
                     admitted; the candidate admits them; a scan that matched nobody names no \
                     person, so they cannot be re-decided",
                    u.scans,
                    names.join(", ")
                );
            }
            println!(
                "{} decisions replayed, {} would change",
                found.replayed,
                found.changed.len()
            );
        }
    }
    Ok(())
}

async fn replay(paths: Vec<PathBuf>) -> anyhow::Result<()> {
    let files = palmgate::replay::runner::collect(&paths);
    if files.is_empty() {
        bail!("no scenario files in {paths:?}");
    }
    let (mut passed, mut failed) = (0, 0);
    for f in files {
        let o = palmgate::replay::runner::run_file(&f).await;
        if o.failures.is_empty() {
            passed += 1;
            println!("ok    {}", o.name);
        } else {
            failed += 1;
            println!("FAIL  {}", o.name);
            for line in &o.failures {
                println!("      {line}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        return Err(Failed(format!("{failed} scenario(s) failed")).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::log_colours;
    use std::ffi::OsStr;

    /// rumqttd's ERRORs for an ordinary disconnection are dropped, as rumqttd words them;
    /// its other errors, and everyone else's, pass.
    #[test]
    fn the_brokers_disconnection_errors_are_dropped_and_no_other() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt;
        struct Seen(Arc<Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                let mut text = super::FieldText(String::new());
                event.record(&mut text);
                self.0.lock().unwrap().push(text.0);
            }
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry()
            .with(super::BrokerDisconnects)
            .with(Seen(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            // As rumqttd logs it: `error!(error=?e, "router-drop")`.
            let e = "Recv(Disconnected)";
            tracing::error!(target: "rumqttd::server::broker", error = %e, "router-drop");
            tracing::error!(target: "rumqttd::router::routing", "no-connection id {} is already gone", 5);
            tracing::error!(target: "rumqttd::server::broker", error = "Io(BrokenPipe)", "router-drop");
            tracing::error!(target: "rumqttd::server::broker", "connection-stop");
            tracing::error!(target: "palmgate::app", "no-connection id 5 is already gone");
        });
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen[0].contains("BrokenPipe"), "{seen:?}");
        assert!(seen[1].contains("connection-stop"), "{seen:?}");
        assert!(seen[2].contains("is already gone"), "{seen:?}");
    }

    /// Colour only on a terminal, and there only without a non-empty NO_COLOR.
    #[test]
    fn log_colours_need_a_terminal_and_no_no_color() {
        assert!(log_colours(true, None));
        assert!(log_colours(true, Some(OsStr::new(""))));
        assert!(!log_colours(true, Some(OsStr::new("1"))));
        assert!(!log_colours(false, None));
        assert!(!log_colours(false, Some(OsStr::new(""))));
    }

    /// SPEC 8.3: after the start-up call the process is not dumpable (no core dump holding
    /// templates, no same-user read of its memory).
    #[cfg(target_os = "linux")]
    #[test]
    fn start_up_makes_the_process_not_dumpable() {
        // SAFETY: PR_GET_DUMPABLE takes and returns integers only.
        let dumpable = || unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
        assert_eq!(dumpable(), 1, "a test process starts dumpable");
        assert!(super::forbid_core_dumps());
        assert_eq!(dumpable(), 0);
    }

    #[test]
    fn a_session_link_arms_the_simulated_reader_whatever_follows_it() {
        for link in [
            "http://127.0.0.1:8080/enroll/tok-1",
            "http://127.0.0.1:8080/enroll/tok-1?reader=desk-1",
            "http://127.0.0.1:8080/enroll/tok-1?reader=desk-1&reader=x#top",
        ] {
            let url = super::arm_link(link, "desk-7").expect("a link");
            assert_eq!(
                url.as_str(),
                "http://127.0.0.1:8080/enroll/tok-1?reader=desk-7",
                "{link}"
            );
        }
        assert!(super::arm_link("tok-1", "desk-7").is_none(), "a bare token");
    }
}
