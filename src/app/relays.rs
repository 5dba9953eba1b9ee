//! The relay side of the shell: one Modbus device task per relay board of the site policy,
//! the core's relay effects routed to them, and their reports fed back as commands.
//!
//! At start-up (and for a device that appears in a new policy) every door coil is told its
//! resting state as the state says now; device tasks re-drive those states after every
//! reconnection, so a door never stays unlocked because a board restarted. A coil the gateway
//! has driven that a new policy no longer gives to a door (the door removed or moved, or its
//! board dropped from the policy) is told to rest locked, and stays so across reconnects; so is
//! one the log has ON for a door that the policy in force at start-up no longer has there
//! (`State::orphan_coils`), at the board's old address if it moved.
//!
//! Reports are recorded in the order they come, and none is dropped because the log cannot be
//! written for a while: a board reports an input, a coil or its own state only when it
//! changes, so a report lost would leave the door's state wrong for good (a contact read
//! closed while the door stands open, a relay shown ON). A report the store refuses is kept,
//! and the ones after it wait, until the store is healthy again and takes it.

use super::{App, AppError};
use crate::core::Command;
use crate::core::doors::RelayCommand;
use crate::modbus::{self, DeviceSpec, Report, Timing};
use crate::store::StoreError;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub struct Relays {
    app: Arc<App>,
    devices: Mutex<HashMap<String, Device>>,
    reports: mpsc::UnboundedSender<Report>,
    /// The device tasks, for [`Relays::stop`].
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Set by [`Relays::stop`]: no device is started after it.
    stopped: std::sync::atomic::AtomicBool,
    /// Coils the log left ON at a board the policy in force still has at the same address,
    /// that no door of it owns: the board's task, when it starts, counts them as driven, so
    /// they are locked like the coils of a door a new policy removes ([`State::orphan_coils`]).
    ///
    /// [`State::orphan_coils`]: crate::core::state::State::orphan_coils
    seeded: Mutex<HashMap<String, BTreeSet<u16>>>,
}

/// A device task, kept for as long as the gateway runs (also once a policy drops its board).
struct Device {
    tx: mpsc::UnboundedSender<modbus::Command>,
    /// Where the task connects: a new policy may move the board.
    address: modbus::Address,
    unit: u8,
    /// Coils the gateway has driven: the door coils of the policy last applied and any coil a
    /// relay effect named since. One a new policy gives to no door is driven OFF.
    coils: BTreeSet<u16>,
    /// Coils last told to rest ON, with the lease they were told ([`Relays::follow_leases`]).
    rests: HashMap<u16, Option<modbus::Lease>>,
}

impl Device {
    /// Tells the task the resting state of `coil`, and remembers a resting ON's lease.
    fn want(&mut self, coil: u16, on: bool, cut_pulse: bool, lease: Option<modbus::Lease>) {
        if on {
            self.rests.insert(coil, lease);
        } else {
            self.rests.remove(&coil);
        }
        let _ = self.tx.send(modbus::Command::Want {
            coil,
            on,
            cut_pulse,
            lease,
        });
    }

    /// Tells the task that `coils` rest locked.
    fn lock<'a>(&mut self, coils: impl Iterator<Item = &'a u16>) {
        for &coil in coils {
            self.want(coil, false, false, None);
        }
    }
}

impl Relays {
    /// Starts the devices of the policy in force and the task that records their reports.
    pub fn start(app: Arc<App>) -> Arc<Relays> {
        let (reports, mut rx) = mpsc::unbounded_channel::<Report>();
        let relays = Arc::new(Relays {
            app: app.clone(),
            devices: Mutex::new(HashMap::new()),
            reports,
            tasks: Mutex::new(Vec::new()),
            stopped: std::sync::atomic::AtomicBool::new(false),
            seeded: Mutex::new(HashMap::new()),
        });
        let mut handled = app.policy_activations();
        relays.adopt_orphans();
        relays.ensure_devices();
        let follower = relays.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(LEASE_FOLLOW_EVERY);
            loop {
                every.tick().await;
                if follower.stopped.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                follower.follow_leases();
            }
        });
        // A new policy may name new boards, and drop doors: connect and lock as it activates.
        // (Woken by activations only: subscribed to every recorded event, it had each one
        // copied for it and was woken for it, once per request under load.)
        let watcher = relays.clone();
        tokio::spawn(async move {
            loop {
                watcher.app.policy_activated().await;
                if watcher.stopped.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                // Not again for one folded before the start above had read the policy.
                let now = watcher.app.policy_activations();
                if now != handled {
                    handled = now;
                    watcher.ensure_devices();
                }
            }
        });
        // Each report is stamped with the time it came (the record loop below may wait for the
        // store a long while: a report keeps the time of the board's write, not of recording).
        let (stamped, mut queue) = mpsc::unbounded_channel();
        let clock = app.clock.clone();
        tokio::spawn(async move {
            while let Some(report) = rx.recv().await {
                super::metrics::relay_report(&report);
                if stamped.send((report, clock.now())).is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Some((report, at)) = queue.recv().await {
                if !record(&app, report, at).await {
                    return; // the store is closed: the gateway is stopping
                }
            }
        });
        relays
    }

    /// Coils the log left ON that the policy in force gives to no door (the door removed or
    /// moved, its board dropped or readdressed, while the gateway was stopped or before it
    /// started): at a board the policy has at the same address they are counted as driven, so
    /// [`Relays::ensure_devices`] locks them (and a coil another door owns now is left to that
    /// door's resting state); at an address the policy no longer uses, a task of its own
    /// switches them OFF there, retrying for [`ORPHAN_RETRY_FOR`], and records the OFF under
    /// the door that left it (`RelayReport::OrphanOff`). It reports no board status: the board
    /// id may name another address now, whose state is the device task's to tell.
    fn adopt_orphans(&self) {
        let (orphans, policy) = self.app.read(|s| (s.orphan_coils(), s.policy.clone()));
        let mut seeded = self.seeded.lock().expect("relays lock");
        let mut elsewhere: HashMap<(String, String, u8), Vec<u16>> = HashMap::new();
        for o in orphans {
            let Some(address) = o
                .address
                .as_deref()
                .and_then(|a| modbus::Address::parse(a).ok())
            else {
                tracing::error!(device = %o.device, coil = o.coil, "a coil the log has ON was switched at an unknown address: it cannot be driven OFF");
                continue;
            };
            // The board of the policy in force at that place (whatever its id now: a board
            // renamed, or another id moved there): the place is the address and unit, an RTU
            // line's path without its baud. Its own task drives the coil, never a second
            // connection, which could switch OFF a coil that task holds ON.
            let place = |a: &modbus::Address| match a {
                modbus::Address::Tcp { host, port } => format!("tcp {host}:{port}"),
                modbus::Address::Rtu { path, .. } => format!("rtu {path}"),
            };
            let here = policy.as_deref().and_then(|p| {
                p.relay_devices
                    .iter()
                    .find(|b| place(&b.modbus) == place(&address) && b.unit == o.unit)
            });
            if let Some(board) = here {
                let owned = policy.as_deref().is_some_and(|p| {
                    p.doors
                        .iter()
                        .any(|d| d.relay.device == board.id && d.relay.coil == o.coil)
                });
                if !owned {
                    tracing::warn!(device = %board.id, coil = o.coil, "a coil the log has ON belongs to no door of the policy in force: driving it OFF");
                    seeded.entry(board.id.clone()).or_default().insert(o.coil);
                }
                continue;
            }
            // A serial line the policy in force still uses (for another unit): a second opener
            // could take the line at another baud, or hold it waiting for a unit that is gone.
            let line_in_use = matches!(&address, modbus::Address::Rtu { .. })
                && policy.as_deref().is_some_and(|p| {
                    p.relay_devices
                        .iter()
                        .any(|b| place(&b.modbus) == place(&address))
                });
            if line_in_use {
                tracing::error!(device = %o.device, coil = o.coil, address = %address, "a coil the log has ON is on a serial line the policy uses for other units only: it is not driven OFF (lock it by hand, or give the line's unit to a board of the policy)");
                continue;
            }
            elsewhere
                .entry((
                    o.device.clone(),
                    o.address.clone().unwrap_or_default(),
                    o.unit,
                ))
                .or_default()
                .push(o.coil);
        }
        drop(seeded);
        for ((device, address, unit), coils) in elsewhere {
            let Ok(addr) = modbus::Address::parse(&address) else {
                tracing::error!(device = %device, address = %address, "the board's old address does not parse: its coils cannot be driven OFF");
                continue;
            };
            tracing::warn!(device = %device, address = %address, coils = ?coils, "coils the log has ON at an address the policy no longer gives this board: driving them OFF there");
            let spec = DeviceSpec {
                id: device.clone(),
                address: addr,
                unit,
                inputs: vec![],
            };
            let reports = self.reports.clone();
            // Not one of `tasks`: a stop does not wait for a board that may never answer.
            tokio::spawn(async move {
                let end = tokio::time::Instant::now() + ORPHAN_RETRY_FOR;
                let mut wait = Duration::from_secs(1);
                loop {
                    match modbus::lock_at(&spec, &coils, Timing::default()).await {
                        Ok(()) => {
                            tracing::info!(device = %device, address = %address, coils = ?coils, "coils at the board's old address are OFF");
                            for &coil in &coils {
                                let _ = reports.send(Report::OrphanOff {
                                    device: device.clone(),
                                    coil,
                                    address: address.clone(),
                                });
                            }
                            return;
                        }
                        Err(e) if tokio::time::Instant::now() + wait >= end => {
                            tracing::error!(device = %device, address = %address, coils = ?coils, error = %e, "cannot drive the coils at the board's old address OFF: giving up until the next start");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(device = %device, address = %address, error = %e, "the board's old address does not answer; retrying");
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(Duration::from_secs(30));
                        }
                    }
                }
            });
        }
    }

    /// Starts a task for every relay device of the policy that has none yet, and tells every
    /// device the policy's inputs and the resting state of its coils. A coil driven before that
    /// the policy gives to no door is driven OFF, on boards the policy dropped too.
    pub fn ensure_devices(&self) {
        // The policy is read under the devices lock: no older policy is applied after a newer.
        let mut devices = self.devices.lock().expect("relays lock");
        if self.stopped.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let Some(policy) = self.app.read(|s| s.policy.clone()) else {
            return;
        };
        let now = self.app.clock.now();
        for dev in &policy.relay_devices {
            let mut inputs: Vec<u16> = policy
                .doors
                .iter()
                .flat_map(|d| {
                    let c = d
                        .contact
                        .iter()
                        .filter(|c| c.device == dev.id)
                        .map(|c| c.input);
                    let r = d.rex.iter().filter(|r| r.device == dev.id).map(|r| r.input);
                    c.chain(r).collect::<Vec<_>>()
                })
                .collect();
            inputs.sort_unstable();
            inputs.dedup();
            // A board already running learns the policy's coils and inputs (a new policy may
            // add doors, contacts or exit buttons to it).
            let (tx, driven, rests) = match devices.remove(&dev.id) {
                Some(d) => {
                    if (&d.address, d.unit) != (&dev.modbus, dev.unit) {
                        // Its coils go OFF at the old address, then the task connects to the
                        // new one and drives the resting states told below.
                        let _ = d.tx.send(modbus::Command::Retarget {
                            address: dev.modbus.clone(),
                            unit: dev.unit,
                        });
                    }
                    let _ = d.tx.send(modbus::Command::Inputs(inputs));
                    (d.tx, d.coils, d.rests)
                }
                None => {
                    let (tx, task) = modbus::start_device(
                        DeviceSpec {
                            id: dev.id.clone(),
                            address: dev.modbus.clone(),
                            unit: dev.unit,
                            inputs,
                        },
                        Timing::default(),
                        self.reports.clone(),
                    );
                    self.tasks.lock().expect("relays lock").push(task);
                    let seeded = self.seeded.lock().expect("relays lock").remove(&dev.id);
                    (tx, seeded.unwrap_or_default(), HashMap::new())
                }
            };
            let mut d = Device {
                tx,
                address: dev.modbus.clone(),
                unit: dev.unit,
                coils: BTreeSet::new(),
                rests,
            };
            for door in policy.doors.iter().filter(|d| d.relay.device == dev.id) {
                let on = self.app.read(|s| s.rests_unlocked(&door.id, now));
                let lease = self.lease(&dev.id, door.relay.coil, on);
                d.want(door.relay.coil, on, false, lease);
                d.coils.insert(door.relay.coil);
            }
            // A door removed, or moved to another coil: its old coil rests locked.
            let gone: Vec<u16> = driven.difference(&d.coils).copied().collect();
            d.lock(gone.iter());
            devices.insert(dev.id.clone(), d);
        }
        // A board the policy no longer lists: its coils locked (its task goes on re-driving
        // them OFF after reconnects), its inputs no longer polled.
        for (id, d) in devices.iter_mut() {
            if !policy.relay_devices.iter().any(|dev| dev.id == *id) {
                let coils = std::mem::take(&mut d.coils);
                d.lock(coils.iter());
                let _ = d.tx.send(modbus::Command::Inputs(vec![]));
            }
        }
    }

    /// The gateway is stopping: every device task ends the pulses in progress (a door granted
    /// a moment before a SIGTERM is not left unlocked until the next start) and stops. Waits
    /// for that at most `within`.
    pub async fn stop(&self, within: Duration) {
        let tasks = {
            let mut devices = self.devices.lock().expect("relays lock");
            // Doors an unlock window with `lock_on_stop` holds unlocked are locked before the
            // tasks stop (never in an emergency: fire safety keeps them open).
            let now = self.app.clock.now();
            let locked: Vec<(String, u16)> = self.app.read(|s| {
                let Some(p) = s.policy.as_deref().filter(|_| !s.emergency && !s.lockdown) else {
                    return vec![];
                };
                p.doors
                    .iter()
                    .filter(|d| p.locks_on_stop(&d.id, now))
                    .map(|d| (d.relay.device.clone(), d.relay.coil))
                    .collect()
            });
            for (device, coil) in locked {
                if let Some(d) = devices.get_mut(&device) {
                    tracing::info!(device = %device, coil, "locking a door its unlock window holds open: the gateway is stopping (lock_on_stop)");
                    d.lock(std::iter::once(&coil));
                }
            }
            self.stopped
                .store(true, std::sync::atomic::Ordering::Release);
            devices.clear(); // the device tasks' senders: each task ends its pulses and stops
            std::mem::take(&mut *self.tasks.lock().expect("relays lock"))
        };
        let deadline = tokio::time::Instant::now() + within;
        for task in tasks {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!("a relay device did not stop in time");
                return;
            }
        }
    }

    /// Whether the policy in force gives `device`/`coil` to a door.
    fn door_coil(&self, device: &str, coil: u16) -> bool {
        self.app.read(|s| {
            s.policy.as_ref().is_some_and(|p| {
                p.doors
                    .iter()
                    .any(|d| d.relay.device == device && d.relay.coil == coil)
            })
        })
    }

    /// (register, count) when the door on `device`/`coil` asks for board-timed pulses and its
    /// board has a pulse timer.
    fn board_timer(&self, device: &str, coil: u16, hold_ms: u32) -> Option<(u16, u16)> {
        self.app.read(|s| {
            let policy = s.policy.as_ref()?;
            policy.doors.iter().find(|d| {
                d.device_timed_pulse && d.relay.device == device && d.relay.coil == coil
            })?;
            let dev = policy.relay_devices.iter().find(|d| d.id == device)?;
            let timer = dev.timed_pulse?;
            let write = timer.write_for(coil, hold_ms);
            if write.is_none() {
                // Only a site logged before the rule that refuses it: the gateway times it.
                tracing::warn!(
                    device,
                    coil,
                    register_base = timer.register_base,
                    "timed-pulse register past 65535: the gateway times this pulse itself"
                );
            }
            write
        })
    }

    /// The lease a door resting unlocked on `device`/`coil` is held by: asked for by an
    /// unlock window holding it now (`lease_s`), its board having a pulse timer, and no
    /// emergency in force (an emergency holds doors open whatever becomes of the gateway).
    fn lease(&self, device: &str, coil: u16, on: bool) -> Option<modbus::Lease> {
        if !on {
            return None;
        }
        let now = self.app.clock.now();
        self.app.read(|s| {
            let policy = s.policy.as_deref().filter(|_| !s.emergency)?;
            let door = policy
                .doors
                .iter()
                .find(|d| d.relay.device == device && d.relay.coil == coil)?;
            let secs = policy.lease_of(&door.id, now)?;
            let timer = policy
                .relay_devices
                .iter()
                .find(|d| d.id == device)?
                .timed_pulse?;
            let (register, count) = timer.write_for(coil, secs.saturating_mul(1000))?;
            Some(modbus::Lease {
                register,
                count,
                renew: Duration::from_millis(u64::from(secs) * 1000 / 3),
            })
        })
    }

    /// Performs a relay effect of the core.
    pub fn perform(&self, device: &str, command: RelayCommand) {
        if !self
            .devices
            .lock()
            .expect("relays lock")
            .contains_key(device)
        {
            // An effect can race the policy watcher by a few microseconds.
            self.ensure_devices();
        }
        let mut devices = self.devices.lock().expect("relays lock");
        let Some(d) = devices.get_mut(device) else {
            tracing::error!(
                device,
                "relay effect for a device the policy does not define"
            );
            return;
        };
        let (RelayCommand::Pulse { coil, .. } | RelayCommand::Rest { coil, .. }) = command;
        d.coils.insert(coil);
        match command {
            RelayCommand::Pulse { coil, hold_ms, tag } => {
                let _ = d.tx.send(modbus::Command::Pulse {
                    coil,
                    hold: Duration::from_millis(u64::from(hold_ms)),
                    tag,
                    timed: self.board_timer(device, coil, hold_ms),
                });
            }
            RelayCommand::Rest {
                coil,
                on,
                cut_pulse,
            } => {
                // Decided under a policy since replaced: a coil no door owns now rests locked.
                let on = on && self.door_coil(device, coil);
                let lease = self.lease(device, coil, on);
                d.want(coil, on, cut_pulse, lease);
            }
        }
    }

    /// Keeps each lease as the state asks for it now: a door resting ON whose lease changed
    /// since it was told (a leased window opening or closing while another window holds the
    /// door, an emergency beginning or ending, a new policy) is told again, so an emergency is
    /// never left on a lease a dead gateway would let lapse, and a leased window is not left on
    /// a plain ON. Run every [`LEASE_FOLLOW_EVERY`].
    fn follow_leases(&self) {
        let mut devices = self.devices.lock().expect("relays lock");
        if self.stopped.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        for (id, d) in devices.iter_mut() {
            let changed: Vec<(u16, Option<modbus::Lease>)> = d
                .rests
                .iter()
                .filter_map(|(&coil, &sent)| {
                    let now = self.lease(id, coil, true);
                    (now != sent).then_some((coil, now))
                })
                .collect();
            for (coil, lease) in changed {
                tracing::info!(device = %id, coil, lease_ms = lease.map(|l| l.renew.as_millis() * 3), "a resting unlock's lease changed");
                d.want(coil, true, false, lease);
            }
        }
    }
}

/// How long start-up keeps trying to switch OFF the coils left ON at a board's old address.
const ORPHAN_RETRY_FOR: Duration = Duration::from_secs(600);

/// The first pause before a refused report is offered again, and the longest.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(100);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(2);

/// Records a device report that came at `at`, retrying while the store refuses it: each try
/// waits until the store says it is healthy, with a pause that doubles per failure. Decided
/// again on every try, so it is judged against the state as it is then (its coil events keep
/// `at`). False when the store is closed.
async fn record(app: &App, report: Report, at: chrono::DateTime<chrono::Utc>) -> bool {
    let mut pause = RECORD_RETRY_FIRST;
    let mut refused = 0u32;
    loop {
        let command = Command::Relay {
            report: report.clone(),
            at: Some(at),
        };
        let e = match app.execute(command).await {
            Ok(_) => {
                if refused > 0 {
                    tracing::info!(
                        ?report,
                        tries = refused + 1,
                        "relay report recorded after the store came back"
                    );
                }
                return true;
            }
            Err(AppError::Store(StoreError::Closed)) => {
                tracing::warn!(?report, "relay report not recorded: the store is closed");
                return false;
            }
            // The store could not write it (full disk, lock held, I/O error), or the stream
            // stayed contended: the same report can be taken later.
            Err(e @ (AppError::Store(StoreError::Io(_)) | AppError::Contended)) => e,
            // The log itself is damaged, or the core refuses it: no retry can record it.
            Err(e) => {
                tracing::error!(?report, error = %e, "relay report not recorded");
                return true;
            }
        };
        if refused == 0 {
            tracing::warn!(?report, error = %e, "relay report not recorded yet; retrying until the store takes it");
        }
        refused += 1;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RECORD_RETRY_MAX);
        while !app.store.healthy() {
            tokio::time::sleep(RECORD_RETRY_FIRST).await;
        }
    }
}

/// How often the leases of doors resting unlocked are compared with what the state asks for
/// ([`Relays::follow_leases`]).
const LEASE_FOLLOW_EVERY: Duration = Duration::from_secs(1);
