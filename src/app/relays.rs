//! The relay side of the shell: one Modbus device task per relay board of the site policy,
//! the core's relay effects routed to them, and their reports fed back as commands.
//!
//! At start-up (and for a device that appears in a new policy) every door coil is told its
//! resting state as the state says now; device tasks re-drive those states after every
//! reconnection, so a door never stays unlocked because a board restarted.

use super::App;
use crate::core::Command;
use crate::core::doors::RelayCommand;
use crate::modbus::{self, DeviceSpec, Report, Timing};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub struct Relays {
    app: Arc<App>,
    devices: Mutex<HashMap<String, mpsc::UnboundedSender<modbus::Command>>>,
    reports: mpsc::UnboundedSender<Report>,
}

impl Relays {
    /// Starts the devices of the policy in force and the task that records their reports.
    pub fn start(app: Arc<App>) -> Arc<Relays> {
        let (reports, mut rx) = mpsc::unbounded_channel::<Report>();
        let relays = Arc::new(Relays {
            app: app.clone(),
            devices: Mutex::new(HashMap::new()),
            reports,
        });
        relays.ensure_devices();
        // A new policy may name new boards: connect them as it activates.
        let watcher = relays.clone();
        let mut recorded = app.recorded_events();
        tokio::spawn(async move {
            loop {
                match recorded.recv().await {
                    Ok(r) if matches!(r.event, crate::core::Event::PolicyActivated { .. }) => {
                        watcher.ensure_devices()
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        tokio::spawn(async move {
            while let Some(report) = rx.recv().await {
                if let Err(e) = app.execute(Command::Relay(report)).await {
                    tracing::error!(error = %e, "relay report not recorded");
                }
            }
        });
        relays
    }

    /// Starts a task for every relay device of the policy that has none yet, and tells every
    /// device the policy's inputs and the resting state of its coils.
    pub fn ensure_devices(&self) {
        let Some(policy) = self.app.read(|s| s.policy.clone()) else {
            return;
        };
        let now = self.app.clock.now();
        let mut devices = self.devices.lock().expect("relays lock");
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
            let tx = match devices.get(&dev.id) {
                Some(tx) => {
                    let _ = tx.send(modbus::Command::Inputs(inputs));
                    tx.clone()
                }
                None => modbus::spawn_device(
                    DeviceSpec {
                        id: dev.id.clone(),
                        address: dev.modbus.clone(),
                        unit: dev.unit,
                        inputs,
                    },
                    Timing::default(),
                    self.reports.clone(),
                ),
            };
            for door in policy.doors.iter().filter(|d| d.relay.device == dev.id) {
                let on = self.app.read(|s| s.rests_unlocked(&door.id, now));
                let _ = tx.send(modbus::Command::Want {
                    coil: door.relay.coil,
                    on,
                    cut_pulse: false,
                });
            }
            devices.insert(dev.id.clone(), tx);
        }
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
            dev.timed_pulse.map(|t| t.write_for(coil, hold_ms))
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
        let devices = self.devices.lock().expect("relays lock");
        let Some(tx) = devices.get(device) else {
            tracing::error!(
                device,
                "relay effect for a device the policy does not define"
            );
            return;
        };
        let cmd = match command {
            RelayCommand::Pulse { coil, hold_ms, tag } => modbus::Command::Pulse {
                coil,
                hold: Duration::from_millis(u64::from(hold_ms)),
                tag,
                timed: self.board_timer(device, coil, hold_ms),
            },
            RelayCommand::Rest {
                coil,
                on,
                cut_pulse,
            } => modbus::Command::Want {
                coil,
                on,
                cut_pulse,
            },
        };
        let _ = tx.send(cmd);
    }
}
