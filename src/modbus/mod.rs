//! Relay boards over Modbus (tokio-modbus, TCP and RTU): one task per device.
//!
//! Each device task owns its connection (devices on one RS-485 serial port share the port,
//! one request at a time, each to its own unit: [`SerialLine`]): connect and response
//! timeouts, reconnection with backoff, and after every (re)connection it drives every coil
//! to the state the app wants now (locked unless an unlock window or emergency says
//! otherwise), so a board that restarted in the middle of a pulse ends with its door locked. A pulse is ON, hold, OFF — and the OFF is
//! read back and retried until it sticks. A board with its own pulse timer (`timed_pulse` in the
//! policy) gets one register write instead, and the gateway only checks afterwards that the
//! coil is OFF (switching it off itself if not): a gateway crash mid-pulse cannot hold a door.
//! Inputs (door contacts, request-to-exit) are polled.
//!
//! Faults stay as small as they are. A device that is down is reported, never fatal; other
//! devices keep working, and the task reconnects with a backoff that doubles up to
//! `backoff_max` (reset once a connection has held that long), never in a hot loop. A board
//! that answers but refuses one coil or input (an exception such as `IllegalDataAddress` for an
//! address it does not have, or a coil that reads back wrong) is not down: that coil is
//! reported failed and retried with backoff until it obeys, that input is logged and read again
//! later, and every other coil, input and command of the board goes on. A failure is reported
//! once, not once per retry, so a board that keeps refusing does not flood the log.

pub mod sim;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::client::{Client, Context, Reader, Writer};
use tokio_modbus::prelude::Slave;

/// Where a device is: the site policy's `modbus` address.
pub use crate::core::policy::ModbusAddr as Address;

/// A device and what to poll on it.
#[derive(Clone, Debug)]
pub struct DeviceSpec {
    pub id: String,
    pub address: Address,
    pub unit: u8,
    /// Discrete inputs to poll (door contacts, request-to-exit buttons).
    pub inputs: Vec<u16>,
}

/// What a device task reports to the app: the core's own input type.
pub use crate::core::RelayReport as Report;

/// Commands to a device task.
#[derive(Clone, Debug)]
pub enum Command {
    /// ON now, OFF after `hold` (unless the wanted state of the coil is ON by then).
    /// With `timed = Some((register, count))` the board times the pulse: one write of `count`
    /// to holding `register`; after `hold` (+ [`TIMED_GRACE`]) the coil is read back and only
    /// driven OFF by the gateway if the board did not end the pulse itself.
    Pulse {
        coil: u16,
        hold: Duration,
        tag: String,
        timed: Option<(u16, u16)>,
    },
    /// The state a coil should rest in (locked = false); applied now and after reconnects.
    /// A pulse in progress ends first, unless `cut_pulse` (lockdown: every relay off now).
    /// ON with a `lease` is held through the board's pulse timer, renewed before it runs out.
    Want {
        coil: u16,
        on: bool,
        cut_pulse: bool,
        lease: Option<Lease>,
    },
    /// The inputs to poll (a new site policy may add contacts or exit buttons).
    Inputs(Vec<u16>),
    /// The board moved (a new site policy gives this id another address or unit): every coil
    /// ON at the old one is driven OFF there (best effort), then the task connects to the new
    /// one, where the wanted states are driven as after any reconnect.
    Retarget { address: Address, unit: u8 },
}

/// A resting ON held through the board's pulse timer: `count` written to holding `register`
/// (the timer, as for a board-timed pulse) every `renew`, so the board switches the coil OFF by
/// itself within the lease when the gateway stops renewing it (dead, cut off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub register: u16,
    pub count: u16,
    pub renew: Duration,
}

/// How often a board with no input to poll is read anyway (one coil): a board that died while
/// idle is then reported down within about this long, not at the next grant's write (which
/// welcomed the person at a door that stayed locked).
pub const LIVENESS_EVERY: Duration = Duration::from_secs(1);

/// How long after a board-timed pulse should have ended the gateway checks that it did.
pub const TIMED_GRACE: Duration = Duration::from_millis(300);

/// Timeouts and backoff of device connections.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub connect: Duration,
    pub response: Duration,
    pub poll: Duration,
    /// The longest wait before a reconnection, or before a coil or input the board refused
    /// is tried again.
    pub backoff_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            connect: Duration::from_secs(1),
            response: Duration::from_millis(500),
            poll: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// Starts a task for `spec`; commands go in through the returned sender, reports come out on
/// `reports`.
pub fn spawn_device(
    spec: DeviceSpec,
    timing: Timing,
    reports: mpsc::UnboundedSender<Report>,
) -> mpsc::UnboundedSender<Command> {
    start_device(spec, timing, reports).0
}

/// As [`spawn_device`], with the task: dropping every sender stops it, after it has ended the
/// pulses in progress (the gateway stopping waits for that).
pub fn start_device(
    spec: DeviceSpec,
    timing: Timing,
    reports: mpsc::UnboundedSender<Report>,
) -> (mpsc::UnboundedSender<Command>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(Device::new(spec, timing, reports).run(rx));
    (tx, task)
}

struct Device {
    spec: DeviceSpec,
    timing: Timing,
    reports: mpsc::UnboundedSender<Report>,
    /// Resting state of each coil.
    wanted: HashMap<u16, bool>,
    /// Coils to turn OFF at a time (end of a pulse), with the pulse's tag.
    offs: BTreeMap<(Instant, u16), String>,
    /// Coils ON because of a pulse.
    pulsing: HashMap<u16, String>,
    /// Pulses the board is timing: coil → (register, count).
    timed: HashMap<u16, (u16, u16)>,
    inputs: HashMap<u16, bool>,
    up: Option<bool>,
    /// Coils whose last write the board refused: the failure last reported, so that retries
    /// that fail the same way report nothing new. A good write clears it.
    coil_faults: HashMap<u16, CoilFault>,
    /// The delay before a refused coil is driven again (doubles per failure, up to
    /// `backoff_max`; a good write resets it).
    coil_retry: HashMap<u16, Duration>,
    /// Inputs the board refuses to read: logged once, read again later.
    input_faults: HashMap<u16, InputFault>,
    /// Coils whose current pulse started from OFF ([`Device::known_off`]): a refused ON write
    /// for it left the door locked.
    from_off: HashSet<u16>,
    /// When a board with no inputs was last heard from ([`LIVENESS_EVERY`]).
    heard: Instant,
    /// Coils resting ON through the board's timer, and when each lease is next renewed (set
    /// once the board holds it).
    leases: HashMap<u16, Lease>,
    renew_at: HashMap<u16, Instant>,
}

/// The failure last reported for a coil.
#[derive(PartialEq)]
struct CoilFault {
    on: bool,
    tag: String,
    error: String,
}

/// An input the board refuses: the error logged, and when to try it again.
struct InputFault {
    error: String,
    next: Instant,
    retry: Duration,
}

/// The first delay before a reconnection, a refused coil's next write, or a refused input's
/// next read; each doubles per failure up to [`Timing::backoff_max`].
const RETRY_FIRST: Duration = Duration::from_millis(100);

/// Why an exchange with a board failed.
#[derive(Debug)]
enum Fault {
    /// The link: no answer in time, or the transport failed. Nothing more can be asked on this
    /// connection; it is dropped and made again, with backoff.
    Link(String),
    /// The board answered, but not as asked: an exception for a coil or input (e.g. one it
    /// does not have), or a coil that reads back wrong. Only that coil or input is affected.
    Point(String),
    /// A [`Fault::Point`] that says the request was not carried out: exception 01–03 (illegal
    /// function, address or value). Others (a gateway's "target did not respond", "acknowledge",
    /// "busy", "device failure") leave it unknown.
    Refused(String),
}

impl Fault {
    /// Only that coil or input is affected (the link is fine).
    fn is_point(&self) -> bool {
        !matches!(self, Fault::Link(_))
    }

    /// After a write the board took: whatever fails next, the write itself was carried out.
    fn after_accepted(self) -> Fault {
        match self {
            Fault::Refused(e) => Fault::Point(e),
            other => other,
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Link(e) | Fault::Point(e) | Fault::Refused(e) => f.write_str(e),
        }
    }
}

/// How a connection ended.
enum Ended {
    /// The app is gone: the task ends.
    AppGone,
    /// The policy moved the board: connect to its new address now.
    Moved,
    /// The link failed.
    Lost(String),
}

/// How a wait while disconnected ended.
enum Offline {
    /// The wait is over: try to connect.
    Retry,
    /// The board moved: connect to its new address now, with no backoff.
    Moved,
    /// The app is gone.
    Gone,
}

/// Connects to `spec`'s board and switches `coils` OFF there, each read back. For coils left
/// ON at an address the policy no longer gives the board (`app::relays`, at start-up): nothing
/// is reported here, the caller records what was done.
pub async fn lock_at(spec: &DeviceSpec, coils: &[u16], timing: Timing) -> Result<(), String> {
    let mut ctx = tokio::time::timeout(timing.connect, connect(spec))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let mut result = Ok(());
    for &coil in coils {
        let done = match timed(timing.response, ctx.write_single_coil(coil, false)).await {
            Ok(()) => match timed(timing.response, ctx.read_coils(coil, 1)).await {
                Ok(got) if got.first() == Some(&false) => Ok(()),
                Ok(_) => Err(format!("coil {coil} still reads ON after OFF")),
                Err(e) => Err(format!("coil {coil}: {e}")),
            },
            Err(e) => Err(format!("coil {coil}: {e}")),
        };
        if let Err(e) = done {
            result = Err(e);
            break;
        }
    }
    let _ = ctx.disconnect().await;
    result
}

async fn connect(spec: &DeviceSpec) -> std::io::Result<Context> {
    let slave = Slave(spec.unit);
    match &spec.address {
        Address::Tcp { host, port } => {
            let addr = tokio::net::lookup_host((host.as_str(), *port))
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other("host does not resolve"))?;
            tokio_modbus::client::tcp::connect_slave(addr, slave).await
        }
        Address::Rtu { path, baud } => {
            let line = SerialLine::of(path, *baud);
            line.open().await?;
            let client: Box<dyn Client> = Box::new(OnLine { line, unit: slave });
            Ok(Context::from(client))
        }
    }
}

/// A Modbus RTU serial port and the RS-485 line behind it, shared by every relay device on it:
/// the port is opened once in the process (a serial port opens exclusively, so a second
/// device opening it for itself could never reach its board), and carries one request at a
/// time, each addressed to its device's unit.
struct SerialLine {
    path: String,
    baud: u32,
    /// `None` until opened, and again after a transport or protocol error (stale bytes of a
    /// late answer, an adapter unplugged): the next request opens it again.
    port: tokio::sync::Mutex<Option<Context>>,
}

/// The serial lines in use, by path: a line lives while a device task holds it.
static LINES: std::sync::Mutex<BTreeMap<String, std::sync::Weak<SerialLine>>> =
    std::sync::Mutex::new(BTreeMap::new());

impl SerialLine {
    /// The line at `path`, opened at `baud` by its first device (the site policy refuses two
    /// bauds on one port).
    fn of(path: &str, baud: u32) -> std::sync::Arc<SerialLine> {
        let mut lines = LINES.lock().unwrap_or_else(|p| p.into_inner());
        lines.retain(|_, l| l.strong_count() > 0);
        if let Some(line) = lines.get(path).and_then(std::sync::Weak::upgrade) {
            return line;
        }
        let line = std::sync::Arc::new(SerialLine {
            path: path.to_string(),
            baud,
            port: tokio::sync::Mutex::new(None),
        });
        lines.insert(path.to_string(), std::sync::Arc::downgrade(&line));
        line
    }

    /// Opens the port unless it is open.
    async fn open(&self) -> std::io::Result<()> {
        let mut port = self.port.lock().await;
        self.open_in(&mut port)
    }

    fn open_in(&self, port: &mut Option<Context>) -> std::io::Result<()> {
        if port.is_none() {
            let stream =
                tokio_serial::SerialStream::open(&tokio_serial::new(&self.path, self.baud))
                    .map_err(std::io::Error::other)?;
            *port = Some(tokio_modbus::client::rtu::attach(stream));
        }
        Ok(())
    }
}

/// A request on a [`SerialLine`]: unless it completes, the line's port is dropped.
struct Pending<'a> {
    port: tokio::sync::MutexGuard<'a, Option<Context>>,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            *self.port = None;
        }
    }
}

/// One device's client on a [`SerialLine`].
struct OnLine {
    line: std::sync::Arc<SerialLine>,
    unit: Slave,
}

impl tokio_modbus::prelude::SlaveContext for OnLine {
    fn set_slave(&mut self, slave: Slave) {
        self.unit = slave;
    }
}

#[async_trait::async_trait]
impl Client for OnLine {
    async fn call(
        &mut self,
        request: tokio_modbus::Request<'_>,
    ) -> tokio_modbus::Result<tokio_modbus::Response> {
        use tokio_modbus::prelude::SlaveContext;
        let mut port = self.line.port.lock().await;
        self.line
            .open_in(&mut port)
            .map_err(tokio_modbus::Error::Transport)?;
        // A request that fails, or is given up (the response timeout), leaves the port to be
        // opened again: what its board still sends must not be read as the next answer.
        let mut pending = Pending { port, done: false };
        let Some(ctx) = pending.port.as_mut() else {
            return Err(tokio_modbus::Error::Transport(std::io::Error::other(
                "serial port not open",
            )));
        };
        ctx.set_slave(self.unit);
        let answer = ctx.call(request).await;
        pending.done = answer.is_ok();
        answer
    }

    /// The line stays open for the other devices on it (it closes with the last of them).
    async fn disconnect(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type Io<T> = Result<T, Fault>;

/// One request with the response timeout. A device exception is a [`Fault::Point`]: the board
/// answered, the link is fine.
async fn timed<T>(
    d: Duration,
    f: impl std::future::Future<Output = tokio_modbus::Result<T>>,
) -> Io<T> {
    match tokio::time::timeout(d, f).await {
        Err(_) => Err(Fault::Link("no answer (timeout)".into())),
        Ok(Err(e)) => Err(Fault::Link(e.to_string())),
        Ok(Ok(Err(code))) => {
            use tokio_modbus::ExceptionCode::{
                IllegalDataAddress, IllegalDataValue, IllegalFunction,
            };
            let e = format!("device exception {code:?}");
            Err(match code {
                IllegalFunction | IllegalDataAddress | IllegalDataValue => Fault::Refused(e),
                _ => Fault::Point(e),
            })
        }
        Ok(Ok(Ok(v))) => Ok(v),
    }
}

impl Device {
    fn new(spec: DeviceSpec, timing: Timing, reports: mpsc::UnboundedSender<Report>) -> Self {
        Device {
            spec,
            timing,
            reports,
            wanted: HashMap::new(),
            offs: BTreeMap::new(),
            pulsing: HashMap::new(),
            timed: HashMap::new(),
            inputs: HashMap::new(),
            up: None,
            coil_faults: HashMap::new(),
            coil_retry: HashMap::new(),
            input_faults: HashMap::new(),
            from_off: HashSet::new(),
            heard: Instant::now(),
            leases: HashMap::new(),
            renew_at: HashMap::new(),
        }
    }

    /// Whether `coil` is off as far as this task knows: no pulse of it running, its resting
    /// state locked, and its last write not a failed OFF.
    fn known_off(&self, coil: u16) -> bool {
        !self.pulsing.contains_key(&coil)
            && !self.wanted.get(&coil).copied().unwrap_or(false)
            && self.coil_faults.get(&coil).is_none_or(|f| f.on)
    }

    fn report(&self, r: Report) {
        let _ = self.reports.send(r);
    }

    fn mark(&mut self, up: bool, error: Option<String>) {
        if self.up == Some(up) {
            return;
        }
        self.up = Some(up);
        let device = self.spec.id.clone();
        self.report(match (up, error) {
            (true, _) => Report::Up { device },
            (false, e) => Report::Down {
                device,
                error: e.unwrap_or_default(),
            },
        });
    }

    /// Applies a command to the bookkeeping; the writes happen in the connected loop.
    fn accept(&mut self, cmd: Command) -> Option<(u16, bool, String)> {
        match cmd {
            Command::Want {
                coil,
                on,
                cut_pulse,
                lease,
            } => {
                self.wanted.insert(coil, on);
                let lease = lease.filter(|_| on);
                let lease_changed = self.leases.get(&coil).copied() != lease;
                match lease {
                    Some(l) => {
                        self.leases.insert(coil, l);
                    }
                    None => {
                        self.leases.remove(&coil);
                        self.renew_at.remove(&coil);
                    }
                }
                if self.pulsing.contains_key(&coil) {
                    // The board would end its timed pulse, or the lease it holds (no longer
                    // renewed), locking the door before the pulse's end applies the wanted ON
                    // (an emergency declared mid-pulse): the new state is written now.
                    if on && (self.timed.remove(&coil).is_some() || lease_changed) {
                        return Some((coil, true, String::new()));
                    }
                    if !cut_pulse {
                        return None; // the pulse's end applies the wanted state
                    }
                    self.pulsing.remove(&coil);
                    self.timed.remove(&coil);
                }
                // A retry of a refused coil is superseded by this write.
                self.offs.retain(|(_, c), _| *c != coil);
                Some((coil, on, String::new()))
            }
            Command::Inputs(inputs) => {
                self.spec.inputs = inputs;
                self.inputs.retain(|i, _| self.spec.inputs.contains(i));
                self.input_faults
                    .retain(|i, _| self.spec.inputs.contains(i));
                None
            }
            Command::Retarget { address, unit } => {
                self.spec.address = address;
                self.spec.unit = unit;
                // The new board may have no timer there: the leases come again with the
                // wanted states told after the move.
                self.leases.clear();
                self.renew_at.clear();
                None
            }
            Command::Pulse {
                coil,
                hold,
                tag,
                timed,
            } => {
                if self.known_off(coil) {
                    self.from_off.insert(coil);
                } else {
                    self.from_off.remove(&coil);
                }
                self.wanted.entry(coil).or_insert(false);
                self.offs.retain(|(_, c), _| *c != coil);
                // A coil resting ON (an unlock window, an emergency) is not pulsed by the
                // board's timer: the board would switch it OFF at the timer's end.
                let resting_on = self.wanted.get(&coil).copied().unwrap_or(false);
                let check = match timed.filter(|_| !resting_on) {
                    Some(t) => {
                        self.timed.insert(coil, t);
                        hold + TIMED_GRACE
                    }
                    None => {
                        self.timed.remove(&coil);
                        hold
                    }
                };
                self.offs
                    .insert((Instant::now() + check, coil), tag.clone());
                self.pulsing.insert(coil, tag.clone());
                Some((coil, true, tag))
            }
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut backoff = RETRY_FIRST;
        loop {
            let conn = tokio::time::timeout(self.timing.connect, connect(&self.spec)).await;
            let error = match conn {
                Ok(Ok(mut ctx)) => {
                    let since = Instant::now();
                    match self.connected(&mut ctx, &mut rx).await {
                        Ended::AppGone => return,
                        Ended::Moved => {
                            self.mark(false, Some("the board moved to a new address".into()));
                            backoff = RETRY_FIRST;
                            continue;
                        }
                        Ended::Lost(e) => {
                            tracing::warn!(device = %self.spec.id, error = %e, "relay device lost");
                            // A connection that held is a good one: the next attempt is quick
                            // again. One that fails at once backs off like a refused connect.
                            if self.up == Some(true) && since.elapsed() >= self.timing.backoff_max {
                                backoff = RETRY_FIRST;
                            }
                            e
                        }
                    }
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "connect timeout".into(),
            };
            self.mark(false, Some(error));
            match self.wait_offline(&mut rx, backoff).await {
                Offline::Retry => backoff = (backoff * 2).min(self.timing.backoff_max),
                Offline::Moved => backoff = RETRY_FIRST,
                Offline::Gone => return,
            }
        }
    }

    /// While disconnected: keep accepting commands (their effect is applied on reconnect).
    async fn wait_offline(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Command>,
        d: Duration,
    ) -> Offline {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Offline::Retry,
                cmd = rx.recv() => match cmd {
                    Some(c) => {
                        // A pulse that cannot start is not held for later: the door stays locked.
                        if let Command::Pulse { coil, tag, .. } = &c {
                            self.report(Report::CoilFailed {
                                device: self.spec.id.clone(),
                                coil: *coil,
                                on: true,
                                error: format!("device down (pulse {tag} dropped)"),
                                tag: tag.clone(),
                                // Never sent; but a coil left on when the link went stays on.
                                refused: self.known_off(*coil),
                            });
                            continue;
                        }
                        let moved = matches!(c, Command::Retarget { .. });
                        self.accept(c);
                        if moved {
                            return Offline::Moved; // connect to the new address now
                        }
                    }
                    None => return Offline::Gone,
                }
            }
        }
    }

    /// A coil did as asked: reported, and any earlier failure of it forgotten.
    fn coil_ok(&mut self, coil: u16, on: bool, tag: String) {
        self.coil_faults.remove(&coil);
        self.coil_retry.remove(&coil);
        self.report(Report::Coil {
            device: self.spec.id.clone(),
            coil,
            on,
            tag,
        });
    }

    /// A coil did not do as asked: reported unless it is the failure last reported for it (a
    /// retry failing the same way adds nothing to the log).
    fn coil_failed(&mut self, coil: u16, on: bool, tag: &str, fault: &Fault) {
        // The door certainly stayed locked: the board refused the write itself, and the coil
        // was off before it (no other pulse running, not resting unlocked, no failed OFF).
        let refused = matches!(fault, Fault::Refused(_)) && on && self.from_off.contains(&coil);
        let fault = CoilFault {
            on,
            tag: tag.to_string(),
            error: fault.to_string(),
        };
        if self.coil_faults.get(&coil) == Some(&fault) {
            return;
        }
        tracing::warn!(device = %self.spec.id, coil, on, error = %fault.error, "relay coil failed; retrying");
        self.report(Report::CoilFailed {
            device: self.spec.id.clone(),
            coil,
            on,
            error: fault.error.clone(),
            tag: fault.tag.clone(),
            refused,
        });
        self.coil_faults.insert(coil, fault);
    }

    /// Drives a refused coil to its resting state again later, with a delay that doubles per
    /// failure: a door is never left unlocked by a failure, and a coil that keeps refusing is
    /// not asked ten times a second.
    fn retry_later(&mut self, coil: u16, tag: String) {
        let max = self.timing.backoff_max.max(RETRY_FIRST);
        let delay = self.coil_retry.entry(coil).or_insert(RETRY_FIRST);
        let at = Instant::now() + *delay;
        *delay = (*delay * 2).min(max);
        self.offs.retain(|(_, c), _| *c != coil);
        self.offs.insert((at, coil), tag);
    }

    async fn write(&mut self, ctx: &mut Context, coil: u16, on: bool, tag: String) -> Io<()> {
        if let Some(lease) = self.leases.get(&coil).copied().filter(|_| on) {
            return self.hold_lease(ctx, coil, lease, tag).await;
        }
        // A direct write ends any lease the board was timing.
        self.renew_at.remove(&coil);
        let r = timed(self.timing.response, ctx.write_single_coil(coil, on)).await;
        let r = match r {
            Ok(()) if !on => {
                // Read back: a door is only locked when the board says so.
                match timed(self.timing.response, ctx.read_coils(coil, 1)).await {
                    Ok(got) if got.first() == Some(&false) => Ok(()),
                    Ok(_) => Err(Fault::Point("coil still reads ON after OFF".into())),
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        match &r {
            Ok(()) => self.coil_ok(coil, on, tag),
            Err(e) => self.coil_failed(coil, on, &tag, e),
        }
        r
    }

    /// Holds `coil` ON through the board's timer for a lease and reads it back: ON is reported
    /// once the board says so, and the lease is renewed from then on.
    async fn hold_lease(
        &mut self,
        ctx: &mut Context,
        coil: u16,
        lease: Lease,
        tag: String,
    ) -> Io<()> {
        let r = match self
            .timer_write(ctx, coil, lease.register, lease.count)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Fault::Point(format!(
                "coil still reads OFF after the lease write to register {}",
                lease.register
            ))),
            Err(e) => Err(e),
        };
        match &r {
            Ok(()) => {
                self.renew_at.insert(coil, Instant::now() + lease.renew);
                self.coil_ok(coil, true, tag);
            }
            Err(e) => self.coil_failed(coil, true, &tag, e),
        }
        r
    }

    /// Renews the leases due: the timer written again (nothing reported while the board takes
    /// it). A renewal it refuses is held again as a refused coil is driven, with read-back and
    /// backoff ([`Device::retry_later`]): the failure is reported (the lease may lapse and lock
    /// the door), and so is the ON once the board takes it. Err only when the link failed.
    async fn renew_leases(&mut self, ctx: &mut Context, now: Instant) -> Result<(), String> {
        let mut due: Vec<u16> = self
            .renew_at
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(c, _)| *c)
            .collect();
        due.sort_unstable();
        for coil in due {
            let Some(lease) = self.leases.get(&coil).copied() else {
                self.renew_at.remove(&coil);
                continue;
            };
            match timed(
                self.timing.response,
                ctx.write_single_register(lease.register, lease.count),
            )
            .await
            {
                Ok(()) => {
                    self.renew_at.insert(coil, Instant::now() + lease.renew);
                }
                Err(f) if f.is_point() => {
                    tracing::warn!(device = %self.spec.id, coil, error = %f, "lease renewal refused; holding it again");
                    if self.pulsing.contains_key(&coil) {
                        // A pulse runs here (the gateway times it): its end holds the lease
                        // again with read-back; until then the renewal is retried as is.
                        self.renew_at.insert(coil, Instant::now() + RETRY_FIRST);
                    } else {
                        self.renew_at.remove(&coil);
                        self.retry_later(coil, String::new());
                    }
                }
                Err(f) => return Err(f.to_string()),
            }
        }
        Ok(())
    }

    /// A command's write: a board-timed pulse starts with its register write, anything else
    /// is a coil write.
    async fn drive(&mut self, ctx: &mut Context, coil: u16, on: bool, tag: String) -> Io<()> {
        let timed = self.timed.get(&coil).copied();
        match timed {
            Some((register, count)) if on && self.pulsing.contains_key(&coil) => {
                self.start_timed(ctx, coil, register, count, tag).await
            }
            _ => self.write(ctx, coil, on, tag).await,
        }
    }

    /// Writes `count` to the board's timer `register` for `coil` and reads the coil back:
    /// whether it reads ON. Once the board took the write, whatever the read-back says it may
    /// be timing the coil, so no failure from there on is `refused`.
    async fn timer_write(
        &mut self,
        ctx: &mut Context,
        coil: u16,
        register: u16,
        count: u16,
    ) -> Io<bool> {
        timed(
            self.timing.response,
            ctx.write_single_register(register, count),
        )
        .await?;
        let got = timed(self.timing.response, ctx.read_coils(coil, 1))
            .await
            .map_err(Fault::after_accepted)?;
        Ok(got.first() == Some(&true))
    }

    /// Starts a board-timed pulse and reads the coil back: ON is reported once the board says
    /// so. A board that does not turn the coil on is reported (the door stays locked).
    async fn start_timed(
        &mut self,
        ctx: &mut Context,
        coil: u16,
        register: u16,
        count: u16,
        tag: String,
    ) -> Io<()> {
        match self.timer_write(ctx, coil, register, count).await {
            Ok(true) => self.coil_ok(coil, true, tag),
            Ok(false) => self.coil_failed(
                coil,
                true,
                &tag,
                &Fault::Point(format!(
                    "coil still reads OFF after the timed-pulse write to register {register}"
                )),
            ),
            Err(fault) if fault.is_point() => {
                self.coil_failed(coil, true, &tag, &fault);
                return Err(fault);
            }
            Err(link) => return Err(link),
        }
        Ok(())
    }

    /// After a board-timed pulse: true when the board has ended it (reported as the OFF).
    async fn timed_pulse_ended(&mut self, ctx: &mut Context, coil: u16, tag: &str) -> Io<bool> {
        let got = timed(self.timing.response, ctx.read_coils(coil, 1)).await?;
        if got.first() == Some(&false) {
            self.coil_ok(coil, false, tag.to_string());
            return Ok(true);
        }
        tracing::warn!(device = %self.spec.id, coil, "the board did not end its timed pulse; switching OFF");
        Ok(false)
    }

    /// Drives `coil` to `on` as a resting state; a refused write is retried later. Err only
    /// when the link failed.
    async fn settle(
        &mut self,
        ctx: &mut Context,
        coil: u16,
        on: bool,
        tag: String,
    ) -> Result<(), String> {
        match self.write(ctx, coil, on, tag.clone()).await {
            Ok(()) => Ok(()),
            Err(f) if f.is_point() => {
                self.retry_later(coil, tag);
                Ok(())
            }
            Err(f) => Err(f.to_string()),
        }
    }

    /// A pulse's end (or a refused coil's retry) that is due: the coil goes to its resting
    /// state, read back. Err only when the link failed.
    async fn end_pulse(
        &mut self,
        ctx: &mut Context,
        key: (Instant, u16),
        tag: String,
    ) -> Result<(), String> {
        let coil = key.1;
        self.offs.remove(&key);
        let rest = self.wanted.get(&coil).copied().unwrap_or(false);
        if self.timed.remove(&coil).is_some() && !rest {
            match self.timed_pulse_ended(ctx, coil, &tag).await {
                Ok(true) => {
                    self.pulsing.remove(&coil);
                    return Ok(());
                }
                // The gateway ends it: OFF with read-back (which reports what the board
                // refuses).
                Ok(false) => {}
                Err(f) if f.is_point() => {}
                Err(f) => return Err(f.to_string()),
            }
        }
        match self.write(ctx, coil, rest, tag.clone()).await {
            Ok(()) => {
                self.pulsing.remove(&coil);
                Ok(())
            }
            // Keep trying until the door is locked.
            Err(f) if f.is_point() => {
                self.retry_later(coil, tag);
                Ok(())
            }
            // The reconnection drives every coil to its resting state.
            Err(f) => Err(f.to_string()),
        }
    }

    async fn connected(
        &mut self,
        ctx: &mut Context,
        rx: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Ended {
        // Drive every coil to its resting state (ends any pulse cut short by the outage).
        self.pulsing.clear();
        self.timed.clear();
        self.offs.clear();
        self.renew_at.clear();
        let mut wanted: Vec<(u16, bool)> = self.wanted.iter().map(|(c, o)| (*c, *o)).collect();
        wanted.sort_unstable();
        for (coil, on) in wanted {
            if let Err(e) = self.settle(ctx, coil, on, String::new()).await {
                return Ended::Lost(e);
            }
        }
        self.inputs.clear();
        if let Err(e) = self.poll(ctx).await {
            return Ended::Lost(e);
        }
        self.mark(true, None);
        let mut next_poll = Instant::now() + self.timing.poll;
        loop {
            let next_off = self.offs.keys().next().map(|(t, _)| *t);
            let next_renew = self.renew_at.values().min().copied();
            let wake = [next_off, next_renew]
                .into_iter()
                .flatten()
                .fold(next_poll, Instant::min);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    let due: Vec<((Instant, u16), String)> = self
                        .offs
                        .range(..=(now, u16::MAX))
                        .map(|(k, v)| (*k, v.clone()))
                        .collect();
                    for (key, tag) in due {
                        if let Err(e) = self.end_pulse(ctx, key, tag).await {
                            return Ended::Lost(e);
                        }
                    }
                    if let Err(e) = self.renew_leases(ctx, now).await {
                        return Ended::Lost(e);
                    }
                    if now >= next_poll {
                        if let Err(e) = self.poll(ctx).await {
                            return Ended::Lost(e);
                        }
                        next_poll = now + self.timing.poll;
                    }
                }
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else {
                        self.end_pulses(ctx).await;
                        return Ended::AppGone;
                    };
                    if let Command::Retarget { .. } = cmd {
                        self.leave(ctx).await;
                        self.accept(cmd);
                        return Ended::Moved;
                    }
                    if let Some((coil, on, tag)) = self.accept(cmd) {
                        match self.drive(ctx, coil, on, tag.clone()).await {
                            Ok(()) => {}
                            // A refused pulse: its end drives the resting state, as always.
                            Err(f) if f.is_point() && self.pulsing.contains_key(&coil) => {}
                            Err(f) if f.is_point() => self.retry_later(coil, tag),
                            Err(f) => return Ended::Lost(f.to_string()),
                        }
                    }
                }
            }
        }
    }

    /// Before the task moves to a board's new address: every coil it holds ON (resting or
    /// pulsing) is driven OFF at the old one, best effort; an error only ends the attempt.
    /// The gateway is stopping: every pulse in progress ends now (its coil driven to its
    /// resting state, read back), so a door granted a moment ago is not left unlocked until the
    /// gateway runs again. Best effort: a failure is logged, and the next start-up drives every
    /// coil to its resting state anyway.
    async fn end_pulses(&mut self, ctx: &mut Context) {
        let mut coils: Vec<u16> = self.pulsing.keys().copied().collect();
        coils.sort_unstable();
        for coil in coils {
            let rest = self.wanted.get(&coil).copied().unwrap_or(false);
            match self.write(ctx, coil, rest, String::new()).await {
                Ok(()) => {
                    self.pulsing.remove(&coil);
                }
                Err(e) => {
                    tracing::warn!(device = %self.spec.id, coil, error = %e, "pulse not ended at shutdown")
                }
            }
        }
    }

    async fn leave(&mut self, ctx: &mut Context) {
        let mut on: Vec<u16> = self
            .wanted
            .iter()
            .filter(|(_, on)| **on)
            .map(|(c, _)| *c)
            .chain(self.pulsing.keys().copied())
            .collect();
        on.sort_unstable();
        on.dedup();
        for coil in on {
            if let Err(e) = self.write(ctx, coil, false, String::new()).await {
                tracing::warn!(device = %self.spec.id, coil, error = %e, "coil at the old address not driven OFF");
                return;
            }
        }
    }

    /// Reads every input due: a change is reported. An input the board refuses is logged once
    /// and read again with backoff; the others are read as usual. Err only when the link
    /// failed.
    async fn poll(&mut self, ctx: &mut Context) -> Result<(), String> {
        if self.spec.inputs.is_empty() {
            return self.check_alive(ctx).await;
        }
        let inputs = self.spec.inputs.clone();
        for input in inputs {
            if self
                .input_faults
                .get(&input)
                .is_some_and(|f| Instant::now() < f.next)
            {
                continue;
            }
            match timed(self.timing.response, ctx.read_discrete_inputs(input, 1)).await {
                Ok(v) => {
                    if let Some(f) = self.input_faults.remove(&input) {
                        tracing::info!(device = %self.spec.id, input, was = %f.error, "input can be read again");
                    }
                    let on = v.first().copied().unwrap_or(false);
                    if self.inputs.insert(input, on) != Some(on) {
                        self.report(Report::Input {
                            device: self.spec.id.clone(),
                            input,
                            on,
                        });
                    }
                }
                Err(f) if f.is_point() => self.input_refused(input, f.to_string()),
                Err(f) => return Err(f.to_string()),
            }
        }
        Ok(())
    }

    /// A board with no inputs is read (its lowest coil) every [`LIVENESS_EVERY`]: a transport
    /// failure ends the connection, which reports the device down. A refusal (a Modbus
    /// exception) is an answer: the board is there.
    async fn check_alive(&mut self, ctx: &mut Context) -> Result<(), String> {
        if self.heard.elapsed() < LIVENESS_EVERY {
            return Ok(());
        }
        let coil = self.wanted.keys().min().copied().unwrap_or(0);
        match timed(self.timing.response, ctx.read_coils(coil, 1)).await {
            Ok(_) => {}
            Err(f) if f.is_point() => {}
            Err(f) => return Err(f.to_string()),
        }
        self.heard = Instant::now();
        Ok(())
    }

    /// The board refused to read `input`: logged when the failure is new, tried again later.
    fn input_refused(&mut self, input: u16, error: String) {
        let max = self.timing.backoff_max.max(RETRY_FIRST);
        let retry = match self.input_faults.get(&input) {
            Some(f) => (f.retry * 2).min(max),
            None => RETRY_FIRST,
        };
        if self
            .input_faults
            .get(&input)
            .is_none_or(|f| f.error != error)
        {
            tracing::error!(
                device = %self.spec.id,
                input,
                error = %error,
                "input cannot be read (is it on this board?); its door contact or exit button \
                 is not watched, the board's other inputs and coils are"
            );
        }
        self.input_faults.insert(
            input,
            InputFault {
                error,
                next: Instant::now() + retry,
                retry,
            },
        );
    }
}
