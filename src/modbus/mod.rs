//! Relay boards over Modbus (tokio-modbus, TCP and RTU): one task per device.
//!
//! Each device task owns its connection: connect and response timeouts, reconnection with
//! backoff, and after every (re)connection it drives every coil to the state the app wants now
//! (locked unless an unlock window or emergency says otherwise), so a board that restarted in
//! the middle of a pulse ends with its door locked. A pulse is ON, hold, OFF — and the OFF is
//! read back and retried until it sticks. A board with its own pulse timer (`timed_pulse` in the
//! policy) gets one register write instead, and the gateway only checks afterwards that the
//! coil is OFF (switching it off itself if not): a gateway crash mid-pulse cannot hold a door. Inputs (door contacts, request-to-exit) are polled.
//! A device that is down is reported, never fatal; other devices keep working.

pub mod sim;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader, Writer};
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
    Want {
        coil: u16,
        on: bool,
        cut_pulse: bool,
    },
    /// The inputs to poll (a new site policy may add contacts or exit buttons).
    Inputs(Vec<u16>),
    /// The board moved (a new site policy gives this id another address or unit): every coil
    /// ON at the old one is driven OFF there (best effort), then the task connects to the new
    /// one, where the wanted states are driven as after any reconnect.
    Retarget { address: Address, unit: u8 },
}

/// How long after a board-timed pulse should have ended the gateway checks that it did.
pub const TIMED_GRACE: Duration = Duration::from_millis(300);

/// Timeouts and backoff of device connections.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub connect: Duration,
    pub response: Duration,
    pub poll: Duration,
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
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(Device::new(spec, timing, reports).run(rx));
    tx
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
            let port = tokio_serial::SerialStream::open(&tokio_serial::new(path, *baud))
                .map_err(std::io::Error::other)?;
            Ok(tokio_modbus::client::rtu::attach_slave(port, slave))
        }
    }
}

type Io<T> = Result<T, String>;

async fn timed<T>(
    d: Duration,
    f: impl std::future::Future<Output = tokio_modbus::Result<T>>,
) -> Io<T> {
    match tokio::time::timeout(d, f).await {
        Err(_) => Err("no answer (timeout)".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(Err(code))) => Err(format!("device exception {code:?}")),
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
        }
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
            } => {
                self.wanted.insert(coil, on);
                if self.pulsing.contains_key(&coil) {
                    if !cut_pulse {
                        return None; // the pulse's end applies the wanted state
                    }
                    self.pulsing.remove(&coil);
                    self.timed.remove(&coil);
                    self.offs.retain(|(_, c), _| *c != coil);
                }
                Some((coil, on, String::new()))
            }
            Command::Inputs(inputs) => {
                self.spec.inputs = inputs;
                self.inputs.retain(|i, _| self.spec.inputs.contains(i));
                None
            }
            Command::Retarget { address, unit } => {
                self.spec.address = address;
                self.spec.unit = unit;
                None
            }
            Command::Pulse {
                coil,
                hold,
                tag,
                timed,
            } => {
                self.wanted.entry(coil).or_insert(false);
                self.offs.retain(|(_, c), _| *c != coil);
                let check = match timed {
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
        let mut backoff = Duration::from_millis(200);
        loop {
            let conn = tokio::time::timeout(self.timing.connect, connect(&self.spec)).await;
            let mut ctx = match conn {
                Ok(Ok(ctx)) => ctx,
                Ok(Err(e)) => {
                    self.mark(false, Some(e.to_string()));
                    if !self.wait_offline(&mut rx, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(self.timing.backoff_max);
                    continue;
                }
                Err(_) => {
                    self.mark(false, Some("connect timeout".into()));
                    if !self.wait_offline(&mut rx, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(self.timing.backoff_max);
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            match self.connected(&mut ctx, &mut rx).await {
                Ok(()) => return, // the app is gone
                Err(e) => {
                    tracing::warn!(device = %self.spec.id, error = %e, "relay device lost");
                    self.up = Some(true);
                    self.mark(false, Some(e));
                }
            }
        }
    }

    /// While disconnected: keep accepting commands (their effect is applied on reconnect).
    /// False when the app has gone away.
    async fn wait_offline(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Command>,
        d: Duration,
    ) -> bool {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                cmd = rx.recv() => match cmd {
                    Some(c) => {
                        // A pulse that cannot start is not held for later: the door stays locked.
                        if let Command::Pulse { coil, tag, .. } = &c {
                            self.report(Report::CoilFailed {
                                device: self.spec.id.clone(),
                                coil: *coil,
                                on: true,
                                error: format!("device down (pulse {tag} dropped)"),
                            });
                            continue;
                        }
                        let moved = matches!(c, Command::Retarget { .. });
                        self.accept(c);
                        if moved {
                            return true; // connect to the new address now
                        }
                    }
                    None => return false,
                }
            }
        }
    }

    async fn write(&mut self, ctx: &mut Context, coil: u16, on: bool, tag: String) -> Io<()> {
        let r = timed(self.timing.response, ctx.write_single_coil(coil, on)).await;
        let r = match r {
            Ok(()) if !on => {
                // Read back: a door is only locked when the board says so.
                let got = timed(self.timing.response, ctx.read_coils(coil, 1)).await?;
                if got.first() == Some(&false) {
                    Ok(())
                } else {
                    Err("coil still reads ON after OFF".into())
                }
            }
            other => other,
        };
        match &r {
            Ok(()) => self.report(Report::Coil {
                device: self.spec.id.clone(),
                coil,
                on,
                tag,
            }),
            Err(e) => self.report(Report::CoilFailed {
                device: self.spec.id.clone(),
                coil,
                on,
                error: e.clone(),
            }),
        }
        r
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
        timed(
            self.timing.response,
            ctx.write_single_register(register, count),
        )
        .await?;
        let got = timed(self.timing.response, ctx.read_coils(coil, 1)).await?;
        let device = self.spec.id.clone();
        if got.first() == Some(&true) {
            self.report(Report::Coil {
                device,
                coil,
                on: true,
                tag,
            });
        } else {
            self.report(Report::CoilFailed {
                device,
                coil,
                on: true,
                error: format!(
                    "coil still reads OFF after the timed-pulse write to register {register}"
                ),
            });
        }
        Ok(())
    }

    /// After a board-timed pulse: true when the board has ended it (reported as the OFF).
    async fn timed_pulse_ended(&mut self, ctx: &mut Context, coil: u16, tag: &str) -> Io<bool> {
        let got = timed(self.timing.response, ctx.read_coils(coil, 1)).await?;
        if got.first() == Some(&false) {
            self.report(Report::Coil {
                device: self.spec.id.clone(),
                coil,
                on: false,
                tag: tag.to_string(),
            });
            return Ok(true);
        }
        tracing::warn!(device = %self.spec.id, coil, "the board did not end its timed pulse; switching OFF");
        Ok(false)
    }

    async fn connected(
        &mut self,
        ctx: &mut Context,
        rx: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Io<()> {
        // Drive every coil to its resting state (ends any pulse cut short by the outage).
        self.pulsing.clear();
        self.timed.clear();
        self.offs.clear();
        let wanted: Vec<(u16, bool)> = self.wanted.iter().map(|(c, o)| (*c, *o)).collect();
        for (coil, on) in wanted {
            self.write(ctx, coil, on, String::new()).await?;
        }
        self.inputs.clear();
        self.poll(ctx).await?;
        self.mark(true, None);
        let mut next_poll = Instant::now() + self.timing.poll;
        loop {
            let next_off = self.offs.keys().next().map(|(t, _)| *t);
            let wake = next_off.map_or(next_poll, |t| t.min(next_poll));
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    let due: Vec<((Instant, u16), String)> = self
                        .offs
                        .range(..=(now, u16::MAX))
                        .map(|(k, v)| (*k, v.clone()))
                        .collect();
                    for ((t, coil), tag) in due {
                        let rest = self.wanted.get(&coil).copied().unwrap_or(false);
                        if self.timed.remove(&coil).is_some() && !rest {
                            match self.timed_pulse_ended(ctx, coil, &tag).await {
                                Ok(true) => {
                                    self.offs.remove(&(t, coil));
                                    self.pulsing.remove(&coil);
                                    continue;
                                }
                                Ok(false) => {} // the gateway ends it: OFF with read-back
                                Err(e) => {
                                    self.offs.remove(&(t, coil));
                                    self.offs.insert((now + Duration::from_millis(200), coil), tag);
                                    return Err(e);
                                }
                            }
                        }
                        match self.write(ctx, coil, rest, tag.clone()).await {
                            Ok(()) => {
                                self.offs.remove(&(t, coil));
                                self.pulsing.remove(&coil);
                            }
                            Err(e) => {
                                // Keep trying until the door is locked.
                                self.offs.remove(&(t, coil));
                                self.offs.insert((now + Duration::from_millis(200), coil), tag);
                                return Err(e);
                            }
                        }
                    }
                    if now >= next_poll {
                        self.poll(ctx).await?;
                        next_poll = now + self.timing.poll;
                    }
                }
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return Ok(()) };
                    if let Command::Retarget { .. } = cmd {
                        self.leave(ctx).await;
                        self.accept(cmd);
                        return Err("the board moved to a new address".into());
                    }
                    if let Some((coil, on, tag)) = self.accept(cmd) {
                        self.drive(ctx, coil, on, tag).await?;
                    }
                }
            }
        }
    }

    /// Before the task moves to a board's new address: every coil it holds ON (resting or
    /// pulsing) is driven OFF at the old one, best effort; an error only ends the attempt.
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

    async fn poll(&mut self, ctx: &mut Context) -> Io<()> {
        let inputs = self.spec.inputs.clone();
        for input in inputs {
            let v = timed(self.timing.response, ctx.read_discrete_inputs(input, 1)).await?;
            let on = v.first().copied().unwrap_or(false);
            if self.inputs.insert(input, on) != Some(on) {
                self.report(Report::Input {
                    device: self.spec.id.clone(),
                    input,
                    on,
                });
            }
        }
        Ok(())
    }
}
