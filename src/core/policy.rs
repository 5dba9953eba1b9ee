//! The site policy (SPEC 6): the document model, its parsing and validation, and the access
//! decision — a pure function of (policy version, door, reader, identified user, instant, mode).
//!
//! [`Policy::parse`] takes the TOML text (the caller reads the file) and reports every error it
//! can find, each naming its key (`levels[1].schedule`) and, where the TOML parser gives a span,
//! its line. Shape errors (unknown keys, wrong types, missing fields) are reported once per
//! table entry; the semantic checks (references, ranges, uniqueness) all run. The version id of
//! a policy is the hex SHA-256 of the exact source text.
//!
//! [`Policy::decide`] applies the checks in SPEC order — lockdown, partner allowed, validity
//! window, level present, level known, door in level, holiday, schedule, anti-passback — and
//! denies with the first that fails. With several levels a grant by any wins (the first in the
//! user's list that grants is named); otherwise the level that passed the most checks (ties: the
//! first) gives the reason. Decisions where the SPEC is silent:
//! - `no_match` / `user_erased` come before everything, lockdown included.
//! - An unparseable `valid_from` denies `not_yet_valid`, an unparseable `valid_until` denies
//!   `expired` (fail closed); `null` means absent. Instants are inclusive at both ends.
//! - `access_level`: a string or a list; `null` and `""` entries are ignored, so `""`, `[]` and
//!   `null` are `no_access_level`; a value that is neither a string nor `null` (a number, an
//!   object) names no known level: `unknown_access_level` with no level named.
//! - `doors = ["*"]` covers every door of the policy; a door the policy does not know is in no
//!   level. `decide` does not check that `reader` is on `door`: the caller maps reader → door.
//! - Emergency unlock does not change decisions (the relay layer holds doors open); decisions
//!   keep being recorded for attendance and anti-passback.
//! - A zone reader that is on no door is accepted with a warning ([`Policy::warnings`]): such a
//!   reader cannot produce door decisions (SPEC 5), so its zone may never see those movements.
//! - Defaults: `partners = ["*"]` (`[]` admits nobody), relay `unit = 1`, TCP port 502, RTU
//!   9600 baud, `pulse_ms = 3000`, `held_open_after_s = 30`, door `name` = its id,
//!   `respect_holidays = false` (levels and, an addition, unlock windows). `timezone` is
//!   required. A coil or an input drives one door only; `*` is not a door id.
//!
//! Pure: no IO, no clock. The hot path of `decide` allocates only the level name it returns.

use super::ids::{ExternalId, PartnerId, ReaderId};
use super::schedule::{self, Bound, Window};
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;

/// A door's id in the site policy (`[[doors]] id`), the `door` of decisions and reader results.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DoorId(pub String);

impl DoorId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DoorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// A validated site document. Read-only after [`Policy::parse`] (the lookups index it).
#[derive(Clone, Debug)]
pub struct Policy {
    pub timezone: Tz,
    /// Hex SHA-256 of the source text: the policy version named by every decision.
    pub sha256: String,
    pub partners: Partners,
    /// Site-zone calendar dates.
    pub holidays: BTreeSet<NaiveDate>,
    pub relay_devices: Vec<RelayDevice>,
    pub doors: Vec<Door>,
    pub schedules: BTreeMap<String, Window>,
    pub levels: Vec<Level>,
    pub unlock_windows: Vec<UnlockWindow>,
    pub zones: Vec<Zone>,
    /// Accepted oddities worth showing an operator (e.g. a zone reader on no door).
    pub warnings: Vec<PolicyError>,
    /// Problems found by rules added after policies were first logged (a reader id no reader
    /// can use): a new activation is refused for them ([`Policy::parse_new`]), a document
    /// already in the log still reads as it did when it was activated.
    pub refused: Vec<PolicyError>,
    door_index: HashMap<DoorId, usize>,
    reader_door: HashMap<ReaderId, usize>,
    level_index: HashMap<String, usize>,
    reader_zone: HashMap<ReaderId, (usize, Direction)>,
}

/// Whose users may open doors at the site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Partners {
    /// `partners = ["*"]` (the default).
    All,
    /// Entries that parse as a UUID match the partner id; the others match the partner name.
    Only {
        ids: Vec<PartnerId>,
        names: Vec<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayDevice {
    pub id: String,
    pub modbus: ModbusAddr,
    /// Modbus unit (slave) id, 0..=247; default 1.
    pub unit: u8,
    /// The board's own pulse timer, when it has one (`timed_pulse`).
    pub timed_pulse: Option<TimedPulse>,
}

/// A board that times pulses itself: writing `n` to holding register `register_base + coil`
/// (function 06) turns the coil on for `n × unit_ms` and then off, with no further command — so
/// a gateway that crashes mid-pulse cannot leave the door open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedPulse {
    pub register_base: u16,
    /// 1..=60000, default 100.
    pub unit_ms: u32,
}

impl TimedPulse {
    /// The register to write for `coil` and the count for a pulse of `pulse_ms` (rounded up, at
    /// least 1); none when `register_base + coil` is past the last register (a new site is
    /// refused for it; a site logged before that rule has the gateway time the pulse).
    pub fn write_for(&self, coil: u16, pulse_ms: u32) -> Option<(u16, u16)> {
        let units = pulse_ms
            .div_ceil(self.unit_ms.max(1))
            .clamp(1, u32::from(u16::MAX));
        Some((
            self.register_base.checked_add(coil)?,
            u16::try_from(units).unwrap_or(u16::MAX),
        ))
    }
}

/// Where a relay board listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModbusAddr {
    /// `tcp://host:port` (`[v6]:port` for IPv6; port default 502).
    Tcp { host: String, port: u16 },
    /// `rtu:///dev/ttyUSB0?baud=9600` (baud default 9600).
    Rtu { path: String, baud: u32 },
}

impl ModbusAddr {
    pub fn parse(s: &str) -> Result<ModbusAddr, String> {
        if let Some(rest) = s.strip_prefix("tcp://") {
            let (host, port) = match rest.strip_prefix('[') {
                Some(v6) => match v6.split_once(']') {
                    Some((h, "")) => (h, None),
                    Some((h, p)) => (h, Some(p.strip_prefix(':').unwrap_or(p))),
                    None => ("", None),
                },
                None => match rest.split_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (rest, None),
                },
            };
            let bad = |c: char| c.is_whitespace() || "/?#@[]".contains(c);
            if host.is_empty()
                || host.contains(bad)
                || (!rest.starts_with('[') && host.contains(':'))
            {
                return Err(format!("`{s}`: bad host (expected tcp://host:port)"));
            }
            let port = match port {
                None => 502,
                Some(p) => match p.parse::<u16>() {
                    Ok(p) if p > 0 => p,
                    _ => return Err(format!("`{s}`: bad port `{p}` (1..=65535)")),
                },
            };
            return Ok(ModbusAddr::Tcp {
                host: host.to_owned(),
                port,
            });
        }
        if let Some(rest) = s.strip_prefix("rtu://") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if !path.starts_with('/') || path.len() < 2 {
                return Err(format!(
                    "`{s}`: expected a device path, e.g. rtu:///dev/ttyUSB0?baud=9600"
                ));
            }
            let mut baud = 9600;
            for param in query.split('&').filter(|p| !p.is_empty()) {
                baud = match param.split_once('=') {
                    Some(("baud", b)) => match b.parse::<u32>() {
                        Ok(b) if b > 0 => b,
                        _ => return Err(format!("`{s}`: bad baud rate `{b}`")),
                    },
                    _ => return Err(format!("`{s}`: unknown parameter `{param}` (only `baud`)")),
                };
            }
            return Ok(ModbusAddr::Rtu {
                path: path.to_owned(),
                baud,
            });
        }
        Err(format!(
            "`{s}`: expected tcp://host:port or rtu:///dev/ttyX?baud=9600"
        ))
    }
}

impl fmt::Display for ModbusAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModbusAddr::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            ModbusAddr::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            ModbusAddr::Rtu { path, baud } => write!(f, "rtu://{path}?baud={baud}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Door {
    pub id: DoorId,
    /// Display name; defaults to the id.
    pub name: String,
    pub readers: Vec<ReaderId>,
    pub relay: Relay,
    pub contact: Option<Contact>,
    pub rex: Option<Rex>,
    /// The board times the pulse itself (one write) instead of ON, wait, OFF.
    pub device_timed_pulse: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relay {
    pub device: String,
    pub coil: u16,
    /// 100..=60000, default 3000.
    pub pulse_ms: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    pub device: String,
    pub input: u16,
    /// 1..=86400, default 30.
    pub held_open_after_s: u32,
}

/// A request-to-exit input that releases the door from inside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rex {
    pub device: String,
    pub input: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Level {
    pub name: String,
    pub doors: LevelDoors,
    /// A key of [`Policy::schedules`].
    pub schedule: String,
    pub respect_holidays: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LevelDoors {
    /// `doors = ["*"]`: every door of the policy.
    All,
    Only(Vec<DoorId>),
}

/// A door held unlocked while its schedule is open (optionally not on holidays).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnlockWindow {
    pub door: DoorId,
    pub schedule: String,
    pub respect_holidays: bool,
    /// The door is locked when the gateway stops (SIGTERM) while this window holds it
    /// unlocked, instead of resting unlocked with no gateway watching it; the next start
    /// unlocks it again if the window is still open. Default `false`.
    pub lock_on_stop: bool,
    /// The door's unlock is held as a lease on its board's pulse timer (`timed_pulse`): the
    /// gateway writes the timer for this many seconds and renews it every third of that, so a
    /// gateway that dies (crash, power, network) leaves the door locked within `lease_s`.
    /// 3..=3600; unset (the default) holds the coil ON with no timer.
    pub lease_s: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    pub name: String,
    pub entry_readers: Vec<ReaderId>,
    pub exit_readers: Vec<ReaderId>,
    pub anti_passback: AntiPassback,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AntiPassback {
    /// Deny a repeated movement (entry after entry, exit after exit).
    Hard,
    /// Grant it, but mark the grant as a passback violation.
    Soft,
}

/// A movement through a zone reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Entry,
    Exit,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Entry => "entry",
            Direction::Exit => "exit",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The decision
// ---------------------------------------------------------------------------------------------

/// The site mode set through the admin API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteMode {
    #[default]
    Normal,
    /// Every decision is denied `lockdown` (after `no_match` / `user_erased`).
    Lockdown,
    /// Relays are held on by the door layer; decisions are unchanged.
    EmergencyUnlock,
}

/// An identified user, as the matcher and the user projection know them.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub partner_id: PartnerId,
    pub partner_name: &'a str,
    pub external_id: &'a ExternalId,
    pub metadata: Option<&'a Value>,
}

/// Who stood at the reader.
#[derive(Clone, Copy, Debug)]
pub enum Identified<'a> {
    NoMatch,
    /// Matched a user whose biometrics were erased.
    Erased,
    User(Subject<'a>),
}

#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub door: &'a DoorId,
    pub reader: &'a ReaderId,
    pub who: Identified<'a>,
    pub at: DateTime<Utc>,
    pub mode: SiteMode,
    /// The user's last recorded direction in the reader's zone (anti-passback state kept by the
    /// caller); `None` when unknown or when the reader is in no zone.
    pub last_in_zone: Option<Direction>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Granted {
        level: String,
        /// Soft anti-passback: granted, but the movement repeats the last one.
        passback_violation: bool,
    },
    Denied {
        reason: DenyReason,
        /// The level that gave the reason, when one did.
        level: Option<String>,
    },
}

impl Verdict {
    pub fn granted(&self) -> bool {
        matches!(self, Verdict::Granted { .. })
    }

    pub fn reason(&self) -> Option<DenyReason> {
        match self {
            Verdict::Granted { .. } => None,
            Verdict::Denied { reason, .. } => Some(*reason),
        }
    }

    pub fn level(&self) -> Option<&str> {
        match self {
            Verdict::Granted { level, .. } => Some(level),
            Verdict::Denied { level, .. } => level.as_deref(),
        }
    }
}

/// Why a door decision was denied (SPEC 6), in the log and the `access` webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    NoMatch,
    UserErased,
    NoAccessLevel,
    UnknownAccessLevel,
    DoorNotInLevel,
    OutsideSchedule,
    Holiday,
    NotYetValid,
    Expired,
    PartnerNotAllowed,
    AntiPassback,
    Lockdown,
}

impl DenyReason {
    pub const ALL: [DenyReason; 12] = [
        DenyReason::NoMatch,
        DenyReason::UserErased,
        DenyReason::NoAccessLevel,
        DenyReason::UnknownAccessLevel,
        DenyReason::DoorNotInLevel,
        DenyReason::OutsideSchedule,
        DenyReason::Holiday,
        DenyReason::NotYetValid,
        DenyReason::Expired,
        DenyReason::PartnerNotAllowed,
        DenyReason::AntiPassback,
        DenyReason::Lockdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::NoMatch => "no_match",
            DenyReason::UserErased => "user_erased",
            DenyReason::NoAccessLevel => "no_access_level",
            DenyReason::UnknownAccessLevel => "unknown_access_level",
            DenyReason::DoorNotInLevel => "door_not_in_level",
            DenyReason::OutsideSchedule => "outside_schedule",
            DenyReason::Holiday => "holiday",
            DenyReason::NotYetValid => "not_yet_valid",
            DenyReason::Expired => "expired",
            DenyReason::PartnerNotAllowed => "partner_not_allowed",
            DenyReason::AntiPassback => "anti_passback",
            DenyReason::Lockdown => "lockdown",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn denied(reason: DenyReason) -> Verdict {
    Verdict::Denied {
        reason,
        level: None,
    }
}

/// What the reader's zone says about this movement, the same for every level.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Passback {
    Fine,
    Soft,
    Hard,
}

impl Policy {
    pub fn door(&self, id: &DoorId) -> Option<&Door> {
        self.door_index.get(id).map(|&i| &self.doors[i])
    }

    /// The door a reader sits at (a reader belongs to at most one door).
    pub fn door_of_reader(&self, reader: &ReaderId) -> Option<&Door> {
        self.reader_door.get(reader).map(|&i| &self.doors[i])
    }

    pub fn level(&self, name: &str) -> Option<&Level> {
        self.level_index.get(name).map(|&i| &self.levels[i])
    }

    /// `t` on the site's wall clock.
    pub fn local(&self, t: DateTime<Utc>) -> DateTime<Tz> {
        t.with_timezone(&self.timezone)
    }

    /// Whether `t` falls on a holiday (a site-zone date).
    pub fn is_holiday(&self, t: DateTime<Utc>) -> bool {
        self.holidays.contains(&self.local(t).date_naive())
    }

    /// Whether an unlock window holds `door` unlocked at `t`.
    pub fn unlocked_by_window(&self, door: &DoorId, t: DateTime<Utc>) -> bool {
        self.open_windows(door, t).next().is_some()
    }

    /// The unlock windows holding `door` unlocked at `t`.
    fn open_windows<'a>(
        &'a self,
        door: &'a DoorId,
        t: DateTime<Utc>,
    ) -> impl Iterator<Item = &'a UnlockWindow> + 'a {
        let local = self.local(t);
        let holiday = self.holidays.contains(&local.date_naive());
        self.unlock_windows.iter().filter(move |w| {
            &w.door == door
                && !(w.respect_holidays && holiday)
                && self
                    .schedules
                    .get(&w.schedule)
                    .is_some_and(|s| s.includes(&local))
        })
    }

    /// Whether a window holding `door` unlocked at `t` asks for it to be locked when the
    /// gateway stops (`lock_on_stop`).
    pub fn locks_on_stop(&self, door: &DoorId, t: DateTime<Utc>) -> bool {
        self.open_windows(door, t).any(|w| w.lock_on_stop)
    }

    /// The lease (in seconds) the windows holding `door` unlocked at `t` ask for: the shortest
    /// of those that ask (the strictest wins); none when no open window asks for one.
    pub fn lease_of(&self, door: &DoorId, t: DateTime<Utc>) -> Option<u32> {
        self.open_windows(door, t).filter_map(|w| w.lease_s).min()
    }

    /// Whether the site admits users of this partner (by partner id or by partner name).
    pub fn partner_allowed(&self, id: PartnerId, name: &str) -> bool {
        match &self.partners {
            Partners::All => true,
            Partners::Only { ids, names } => ids.contains(&id) || names.iter().any(|n| n == name),
        }
    }

    /// The zone a reader moves people in or out of.
    pub fn zone_of_reader(&self, reader: &ReaderId) -> Option<(&str, Direction)> {
        self.reader_zone
            .get(reader)
            .map(|&(z, d)| (self.zones[z].name.as_str(), d))
    }

    /// The access decision (SPEC 6); see the module doc for the rules.
    pub fn decide(&self, req: &Request<'_>) -> Verdict {
        let who = match req.who {
            Identified::NoMatch => return denied(DenyReason::NoMatch),
            Identified::Erased => return denied(DenyReason::UserErased),
            Identified::User(s) => s,
        };
        if req.mode == SiteMode::Lockdown {
            return denied(DenyReason::Lockdown);
        }
        if !self.partner_allowed(who.partner_id, who.partner_name) {
            return denied(DenyReason::PartnerNotAllowed);
        }
        let local = self.local(req.at);
        let date = local.date_naive();
        let field = |k: &str| who.metadata.and_then(|m| m.get(k)).filter(|v| !v.is_null());
        let bound = |k: &str| field(k).map(|v| v.as_str().and_then(Bound::parse));
        // Present (not null) but unparseable or unmet: denied.
        if bound("valid_from").is_some_and(|b| !b.is_some_and(|b| b.started(req.at, date))) {
            return denied(DenyReason::NotYetValid);
        }
        if bound("valid_until").is_some_and(|b| !b.is_some_and(|b| b.not_ended(req.at, date))) {
            return denied(DenyReason::Expired);
        }
        let names: &[Value] = match field("access_level") {
            None => &[],
            Some(Value::Array(items)) => items,
            Some(one) => std::slice::from_ref(one),
        };
        let passback = match (self.reader_zone.get(req.reader), req.last_in_zone) {
            (Some(&(zone, dir)), Some(last)) if dir == last => match self.zones[zone].anti_passback
            {
                AntiPassback::Hard => Passback::Hard,
                AntiPassback::Soft => Passback::Soft,
            },
            _ => Passback::Fine,
        };
        let holiday = self.holidays.contains(&date);
        // (checks passed, reason, level name) of the best denial so far.
        let mut best: Option<(u8, DenyReason, Option<&str>)> = None;
        for item in names {
            let name = match item {
                Value::Null => continue,
                Value::String(s) if s.is_empty() => continue,
                Value::String(s) => Some(s.as_str()),
                _ => None,
            };
            let outcome = match name.and_then(|n| self.level(n)) {
                None => Err((0, DenyReason::UnknownAccessLevel)),
                Some(level) => self.try_level(level, req.door, &local, holiday, passback),
            };
            match outcome {
                Ok(violation) => {
                    return Verdict::Granted {
                        level: name.unwrap_or_default().to_owned(),
                        passback_violation: violation,
                    };
                }
                Err((passed, reason)) => {
                    if best.is_none_or(|(b, _, _)| passed > b) {
                        best = Some((passed, reason, name));
                    }
                }
            }
        }
        match best {
            None => denied(DenyReason::NoAccessLevel),
            Some((_, reason, level)) => Verdict::Denied {
                reason,
                level: level.map(str::to_owned),
            },
        }
    }

    /// The level-specific checks of a known level: `Ok(passback violation)` or
    /// `Err((checks passed, reason))`, counting "level known" as the first check passed.
    fn try_level(
        &self,
        level: &Level,
        door: &DoorId,
        local: &DateTime<Tz>,
        holiday: bool,
        passback: Passback,
    ) -> Result<bool, (u8, DenyReason)> {
        let in_level = match &level.doors {
            LevelDoors::All => self.door_index.contains_key(door),
            LevelDoors::Only(doors) => doors.contains(door),
        };
        if !in_level {
            return Err((1, DenyReason::DoorNotInLevel));
        }
        if level.respect_holidays && holiday {
            return Err((2, DenyReason::Holiday));
        }
        if !self
            .schedules
            .get(&level.schedule)
            .is_some_and(|s| s.includes(local))
        {
            return Err((3, DenyReason::OutsideSchedule));
        }
        match passback {
            Passback::Fine => Ok(false),
            Passback::Soft => Ok(true),
            Passback::Hard => Err((4, DenyReason::AntiPassback)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation
// ---------------------------------------------------------------------------------------------

/// One problem in a site document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// Where, e.g. `levels[1].schedule`; empty for a TOML syntax error.
    pub key: String,
    /// 1-based line in the source text, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (Some(l), false) => write!(f, "line {l}, {}: {}", self.key, self.message),
            (Some(l), true) => write!(f, "line {l}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.key, self.message),
            (None, true) => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

impl Policy {
    /// [`Policy::parse`] for a document about to be activated: [`Policy::refused`] problems
    /// are errors too, reported with the document's other errors, sorted by line.
    pub fn parse_new(text: &str) -> Result<Policy, Vec<PolicyError>> {
        Policy::parse_new_checked(text, |_, _| Vec::new())
    }

    /// [`Policy::parse_new`] for a document activated at `now`: a schedule that a level or an
    /// unlock window uses must open again after `now` (one whose every window lies in the past
    /// or matches no date would deny that level, or keep that door locked, for good). Checked
    /// on the schedules that compiled even when other parts of the document have errors, so one
    /// upload reports everything wrong with it, each with its line.
    pub fn parse_new_at(text: &str, now: DateTime<Utc>) -> Result<Policy, Vec<PolicyError>> {
        Policy::parse_new_checked(text, |policy, lines| never_opens(policy, lines, now))
    }

    /// [`Policy::parse_new`] with `more` problems found on the policy as far as it was built
    /// (given the line of each schedule's key).
    fn parse_new_checked(
        text: &str,
        more: impl FnOnce(&Policy, &HashMap<String, usize>) -> Vec<PolicyError>,
    ) -> Result<Policy, Vec<PolicyError>> {
        let Parsed {
            policy,
            mut errors,
            refused,
            schedule_lines,
        } = Policy::parse_parts(text)?;
        errors.extend(refused);
        // Schedules are read in the site's zone: with no valid zone, no "never opens" verdict.
        // Nor on a schedule with an expression refused: it is judged once it is written right.
        if !errors.iter().any(|e| e.key == "timezone") {
            let schedule_of = |key: &str| {
                key.strip_prefix("schedules.")
                    .map(|k| k.split(['[', '.']).next().unwrap_or(k).to_owned())
            };
            let broken: std::collections::HashSet<String> =
                errors.iter().filter_map(|e| schedule_of(&e.key)).collect();
            errors.extend(
                more(&policy, &schedule_lines)
                    .into_iter()
                    .filter(|e| schedule_of(&e.key).is_none_or(|n| !broken.contains(&n))),
            );
        }
        if errors.is_empty() {
            return Ok(policy);
        }
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        Err(errors)
    }

    /// Parses and validates a site document; all the errors found, sorted by line.
    pub fn parse(text: &str) -> Result<Policy, Vec<PolicyError>> {
        let Parsed {
            policy,
            mut errors,
            refused,
            ..
        } = Policy::parse_parts(text)?;
        if errors.is_empty() {
            Ok(Policy { refused, ..policy })
        } else {
            errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            Err(errors)
        }
    }

    /// The document built as far as it goes (complete only when `errors` is empty), or the
    /// TOML syntax error.
    fn parse_parts(text: &str) -> Result<Parsed, Vec<PolicyError>> {
        let root = DeTable::parse(text).map_err(|e| {
            vec![PolicyError {
                key: String::new(),
                line: e.span().map(|s| line_at(text, s.start)),
                message: e.message().trim().to_owned(),
            }]
        })?;
        let mut cx = Cx {
            text,
            root: &root,
            errors: Vec::new(),
            warnings: Vec::new(),
            refused: Vec::new(),
        };
        let policy = build(&mut cx);
        // In the document's order, whatever order the checks ran in.
        cx.warnings.sort_by_key(|w| w.line.unwrap_or(usize::MAX));
        let schedule_lines = policy
            .schedules
            .keys()
            .filter_map(|name| {
                cx.line_of(&[Seg::from("schedules"), Seg::from(name.as_str())])
                    .map(|l| (name.clone(), l))
            })
            .collect();
        Ok(Parsed {
            policy: Policy {
                warnings: cx.warnings,
                ..policy
            },
            errors: cx.errors,
            refused: cx.refused,
            schedule_lines,
        })
    }
}

/// A site document as far as it could be built.
struct Parsed {
    policy: Policy,
    errors: Vec<PolicyError>,
    /// Problems that refuse a new activation only ([`Policy::refused`]).
    refused: Vec<PolicyError>,
    /// The line of each schedule's key.
    schedule_lines: HashMap<String, usize>,
}

/// The schedules that a level or an unlock window of `policy` uses and that never open again
/// after `now`, each with its line.
fn never_opens(
    policy: &Policy,
    lines: &HashMap<String, usize>,
    now: DateTime<Utc>,
) -> Vec<PolicyError> {
    let local = now.with_timezone(&policy.timezone);
    let used = policy
        .levels
        .iter()
        .map(|l| (&l.schedule, format!("level `{}`", l.name)))
        .chain(policy.unlock_windows.iter().map(|u| {
            (
                &u.schedule,
                format!("the unlock window of door `{}`", u.door),
            )
        }));
    let mut errors: Vec<PolicyError> = Vec::new();
    for (name, user) in used {
        let Some(window) = policy.schedules.get(name) else {
            continue;
        };
        if window.opens_after(&local) {
            continue;
        }
        let key = format!("schedules.{name}");
        match errors.iter_mut().find(|e| e.key == key) {
            Some(e) => e.message.push_str(&format!(", {user}")),
            None => errors.push(PolicyError {
                key,
                line: lines.get(name).copied(),
                message: format!(
                    "none of its windows ({window}) opens after {} (site time): it is used by \
                     {user}",
                    local.format("%Y-%m-%d %H:%M:%S")
                ),
            }),
        }
    }
    errors
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    id: String,
    modbus: String,
    #[serde(default = "default_unit")]
    unit: i64,
    timed_pulse: Option<RawTimed>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimed {
    register_base: i64,
    unit_ms: Option<i64>,
}

fn default_unit() -> i64 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoor {
    id: String,
    name: Option<String>,
    #[serde(default)]
    readers: Vec<String>,
    relay: RawRelay,
    contact: Option<RawInput>,
    rex: Option<RawInput>,
    #[serde(default)]
    device_timed_pulse: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    device: String,
    coil: i64,
    pulse_ms: Option<i64>,
}

/// A contact (with `held_open_after_s`) or a request-to-exit input (without).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    device: String,
    input: i64,
    held_open_after_s: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLevel {
    name: String,
    doors: Vec<String>,
    schedule: String,
    #[serde(default)]
    respect_holidays: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnlock {
    door: String,
    schedule: String,
    /// Unset reads as `false` (as before it was warned about).
    #[serde(default)]
    respect_holidays: Option<bool>,
    #[serde(default)]
    lock_on_stop: bool,
    lease_s: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    name: String,
    #[serde(default)]
    entry_readers: Vec<String>,
    #[serde(default)]
    exit_readers: Vec<String>,
    anti_passback: AntiPassback,
}

/// One step of a key path (`levels`, `1`, `schedule`).
#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Idx(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Seg {
        Seg::Key(s.to_owned())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Seg {
        Seg::Idx(i)
    }
}

macro_rules! path {
    ($($s:expr),* $(,)?) => { [$(Seg::from($s)),*] };
}

/// `levels[1].schedule`.
fn key_of(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Idx(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A parse in progress: the source, its spanned tree, and what went wrong so far.
struct Cx<'t> {
    text: &'t str,
    root: &'t Spanned<DeTable<'t>>,
    errors: Vec<PolicyError>,
    warnings: Vec<PolicyError>,
    refused: Vec<PolicyError>,
}

impl<'t> Cx<'t> {
    /// The line of the deepest value along `path` that the document has.
    fn line_of(&self, path: &[Seg]) -> Option<usize> {
        let mut span = self.root.span();
        let mut at: Option<&DeValue<'_>> = None;
        for seg in path {
            let next = match (seg, at) {
                (Seg::Key(k), None) => self.root.get_ref().get(k.as_str()),
                (Seg::Key(k), Some(v)) => v.get(k.as_str()),
                (Seg::Idx(i), Some(v)) => v.get(*i),
                (Seg::Idx(_), None) => None,
            };
            let Some(next) = next else { break };
            span = next.span();
            at = Some(next.get_ref());
        }
        Some(line_at(self.text, span.start))
    }

    fn problem(&self, path: &[Seg], message: String) -> PolicyError {
        PolicyError {
            key: key_of(path),
            line: self.line_of(path),
            message,
        }
    }

    fn error(&mut self, path: &[Seg], message: impl Into<String>) {
        let e = self.problem(path, message.into());
        self.errors.push(e);
    }

    fn warn(&mut self, path: &[Seg], message: impl Into<String>) {
        let w = self.problem(path, message.into());
        self.warnings.push(w);
    }

    /// Deserializes one value into `T`; a shape error is recorded under its inner key.
    fn de<T: DeserializeOwned>(&mut self, path: &[Seg], v: &Spanned<DeValue<'t>>) -> Option<T> {
        let e = match serde_path_to_error::deserialize(ValueDeserializer::from(v.clone())) {
            Ok(t) => return Some(t),
            Err(e) => e,
        };
        let mut full = path.to_vec();
        for seg in e.path().iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index } => full.push(Seg::Idx(*index)),
                serde_path_to_error::Segment::Map { key } => full.push(Seg::Key(key.clone())),
                _ => {}
            }
        }
        let inner = e.into_inner();
        let mut problem = self.problem(&full, inner.message().trim().to_owned());
        if let Some(span) = inner.span() {
            problem.line = Some(line_at(self.text, span.start));
        }
        self.errors.push(problem);
        None
    }

    /// The entries of an array of tables (`[[doors]]`), each deserialized on its own so that
    /// one bad entry does not hide the others.
    fn entries<T: DeserializeOwned>(
        &mut self,
        name: &str,
        v: &'t Spanned<DeValue<'t>>,
    ) -> Vec<(usize, T)> {
        let Some(items) = v.get_ref().as_array() else {
            self.error(
                &path![name],
                format!("must be an array of tables (`[[{name}]]`)"),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(t) = self.de(&path![name, i], item) {
                out.push((i, t));
            }
        }
        out
    }

    /// A reader id a reader can use in its MQTT topics (SPEC 5); any other could never scan.
    fn reader_id(&mut self, path: &[Seg], s: &str) -> bool {
        if !self.non_empty(path, s, "a reader id") {
            return false;
        }
        let ok = super::ids::ReaderId::is_valid(s);
        if !ok {
            let e = self.problem(
                path,
                format!(
                    "reader id `{s}` must be 1–{} letters, digits or `-_.:` (it is a level of the \
                     reader's MQTT topics)",
                    super::ids::ReaderId::MAX_LEN
                ),
            );
            self.refused.push(e);
        }
        ok
    }

    fn non_empty(&mut self, path: &[Seg], s: &str, what: &str) -> bool {
        let ok = !s.trim().is_empty();
        if !ok {
            self.error(path, format!("{what} must not be empty"));
        }
        ok
    }

    /// `v` if it lies in `lo..=hi`; otherwise an error and a placeholder.
    fn ranged<T: TryFrom<i64> + Default>(&mut self, path: &[Seg], v: i64, lo: i64, hi: i64) -> T {
        if !(lo..=hi).contains(&v) {
            self.error(path, format!("{v} is out of range {lo}..={hi}"));
        }
        T::try_from(v).unwrap_or_default()
    }

    /// Records `id` as seen at entry `i` of `table`, or reports the duplicate.
    fn unique(&mut self, seen: &mut BTreeMap<String, usize>, path: &[Seg], id: &str, i: usize) {
        let table = key_of(&path[..1]);
        match seen.get(id) {
            Some(first) => self.error(
                path,
                format!("duplicate `{id}` (first in {table}[{first}])"),
            ),
            None => {
                seen.insert(id.to_owned(), i);
            }
        }
    }

    /// A relay-device reference must name a `[[relay_devices]]` id.
    fn device_ref(&mut self, path: &[Seg], device: &str, known: &Known) {
        if !known.devices.contains(device) {
            self.error(path, format!("unknown relay device `{device}`"));
        }
    }

    /// Claims `(device, n)` for `door`, or reports who already has it.
    fn claim(
        &mut self,
        taken: &mut BTreeMap<(String, u16), String>,
        path: &[Seg],
        device: &str,
        n: u16,
        door: &str,
    ) {
        if let Some(other) = taken.insert((device.to_owned(), n), door.to_owned()) {
            self.error(
                path,
                format!("{n} of `{device}` is already used by door `{other}`"),
            );
        }
    }
}

/// Names the document declares, peeked from the raw tree so that an entry with a shape error
/// does not make every reference to it an error too.
struct Known {
    devices: BTreeSet<String>,
    /// Devices that declare `timed_pulse`.
    timed_devices: BTreeSet<String>,
    doors: BTreeSet<String>,
    readers: BTreeSet<String>,
    schedules: BTreeSet<String>,
}

/// The strings at `key` (a string or a list of strings) of one raw table entry.
fn peek_item(item: &Spanned<DeValue<'_>>, key: &str) -> Vec<String> {
    match item.get_ref().get(key).map(Spanned::get_ref) {
        Some(DeValue::String(s)) => vec![s.to_string()],
        Some(DeValue::Array(a)) => a
            .iter()
            .filter_map(|x| x.get_ref().as_str())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The raw entries of the array of tables `table`, whatever their shape.
fn raw_items<'a, 't>(root: &'a DeTable<'t>, table: &str) -> &'a [Spanned<DeValue<'t>>] {
    root.get(table)
        .and_then(|v| v.get_ref().as_array())
        .map_or(&[], |a| a.as_ref())
}

/// The strings at `key` of every entry of the array of tables `table`.
fn peek(root: &DeTable<'_>, table: &str, key: &str) -> BTreeSet<String> {
    raw_items(root, table)
        .iter()
        .flat_map(|item| peek_item(item, key))
        .collect()
}

const TOP_KEYS: [&str; 9] = [
    "timezone",
    "partners",
    "holidays",
    "relay_devices",
    "doors",
    "schedules",
    "levels",
    "unlock_windows",
    "zones",
];

fn build<'t>(cx: &mut Cx<'t>) -> Policy {
    let root: &'t DeTable<'t> = cx.root.get_ref();
    for (k, _) in root.iter() {
        let k: &str = k.get_ref();
        if !TOP_KEYS.contains(&k) {
            cx.error(
                &path![k],
                format!("unknown key; expected one of {}", TOP_KEYS.join(", ")),
            );
        }
    }
    let schedule_names = root.get("schedules").and_then(|v| v.get_ref().as_table());
    let known = Known {
        devices: peek(root, "relay_devices", "id"),
        timed_devices: raw_items(root, "relay_devices")
            .iter()
            .filter(|item| item.get_ref().get("timed_pulse").is_some())
            .flat_map(|item| peek_item(item, "id"))
            .collect(),
        doors: peek(root, "doors", "id"),
        readers: peek(root, "doors", "readers"),
        schedules: schedule_names
            .map(|t| t.iter().map(|(k, _)| k.get_ref().to_string()).collect())
            .unwrap_or_default(),
    };
    let timezone = timezone(cx, root.get("timezone"));
    let partners = root
        .get("partners")
        .map_or(Partners::All, |v| partners(cx, v));
    let holidays = root
        .get("holidays")
        .map(|v| holidays(cx, v))
        .unwrap_or_default();
    let relay_devices = root
        .get("relay_devices")
        .map(|v| devices(cx, v))
        .unwrap_or_default();
    let doors = root
        .get("doors")
        .map(|v| doors(cx, v, &known, &relay_devices))
        .unwrap_or_default();
    let schedules = root
        .get("schedules")
        .map(|v| schedules(cx, v))
        .unwrap_or_default();
    let levels = root
        .get("levels")
        .map(|v| levels(cx, v, &known))
        .unwrap_or_default();
    let unlock_windows = root
        .get("unlock_windows")
        .map(|v| unlocks(cx, v, &known, !holidays.is_empty(), &doors, &relay_devices))
        .unwrap_or_default();
    let zones = root
        .get("zones")
        .map(|v| zones(cx, v, &known))
        .unwrap_or_default();

    let door_index = doors
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.clone(), i))
        .collect();
    let reader_door = doors
        .iter()
        .enumerate()
        .flat_map(|(i, d)| d.readers.iter().map(move |r| (r.clone(), i)))
        .collect();
    let level_index = levels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.clone(), i))
        .collect();
    let reader_zone = zones
        .iter()
        .enumerate()
        .flat_map(|(i, z)| {
            let entry = z
                .entry_readers
                .iter()
                .map(move |r| (r.clone(), (i, Direction::Entry)));
            entry.chain(
                z.exit_readers
                    .iter()
                    .map(move |r| (r.clone(), (i, Direction::Exit))),
            )
        })
        .collect();
    Policy {
        timezone,
        sha256: hex::encode(Sha256::digest(cx.text.as_bytes())),
        partners,
        holidays,
        relay_devices,
        doors,
        schedules,
        levels,
        unlock_windows,
        zones,
        warnings: Vec::new(),
        refused: Vec::new(),
        door_index,
        reader_door,
        level_index,
        reader_zone,
    }
}

fn timezone<'t>(cx: &mut Cx<'t>, v: Option<&'t Spanned<DeValue<'t>>>) -> Tz {
    let p = path!["timezone"];
    let Some(v) = v else {
        cx.error(
            &p,
            "missing: the site's IANA time zone, e.g. \"Asia/Almaty\"",
        );
        return Tz::UTC;
    };
    let Some(name) = cx.de::<String>(&p, v) else {
        return Tz::UTC;
    };
    let tz = name.parse().unwrap_or_else(|_| {
        cx.error(
            &p,
            format!("unknown time zone `{name}` (an IANA name such as \"Europe/Berlin\")"),
        );
        Tz::UTC
    });
    if let Some(offset) = fixed_offset_name(&name) {
        cx.warn(
            &p,
            format!(
                "`{name}` is {offset} all year, with no summer time: a site's clock follows its \
                 place, so name the place (e.g. \"America/New_York\", \"Asia/Almaty\"){}",
                if name.starts_with("Etc/") {
                    "; in `Etc/GMT+N` the sign is inverted (`Etc/GMT+5` is UTC−05:00)"
                } else {
                    ""
                }
            ),
        );
    }
    tz
}

/// The offset, as text, of a zone name that is a fixed offset from UTC other than zero and
/// names no place: `Etc/GMT+5` (UTC−05:00: the POSIX sign is inverted), and the old `EST`,
/// `MST` and `HST`. Such a site never changes to summer time, which is rarely what was meant.
fn fixed_offset_name(name: &str) -> Option<String> {
    let hours: i32 = match name {
        "EST" => -5,
        "MST" => -7,
        "HST" => -10,
        _ => {
            let rest = name.strip_prefix("Etc/GMT")?;
            let (sign, digits) = match rest.as_bytes().first()? {
                b'+' => (-1, &rest[1..]),
                b'-' => (1, &rest[1..]),
                _ => return None,
            };
            sign * digits.parse::<i32>().ok()?
        }
    };
    (hours != 0).then(|| {
        let sign = if hours < 0 { '−' } else { '+' };
        format!("UTC{sign}{:02}:00", hours.abs())
    })
}

fn partners<'t>(cx: &mut Cx<'t>, v: &'t Spanned<DeValue<'t>>) -> Partners {
    let list: Vec<String> = cx.de(&path!["partners"], v).unwrap_or_default();
    let (mut ids, mut names) = (Vec::new(), Vec::new());
    for (i, p) in list.iter().enumerate() {
        if p == "*" && list.len() > 1 {
            cx.error(
                &path!["partners", i],
                "`*` (every partner) must be the only entry",
            );
        } else if cx.non_empty(&path!["partners", i], p, "a partner id or name") {
            match PartnerId::parse(p) {
                Some(id) => ids.push(id),
                None => names.push(p.clone()),
            }
        }
    }
    if list.iter().any(|p| p == "*") {
        Partners::All
    } else {
        Partners::Only { ids, names }
    }
}

fn holidays<'t>(cx: &mut Cx<'t>, v: &'t Spanned<DeValue<'t>>) -> BTreeSet<NaiveDate> {
    let mut out = BTreeSet::new();
    let Some(list) = v.get_ref().as_array() else {
        cx.error(
            &path!["holidays"],
            "must be an array of dates, e.g. [\"2026-12-16\"]",
        );
        return out;
    };
    for (i, item) in list.iter().enumerate() {
        let date = match item.get_ref() {
            DeValue::String(h) => {
                schedule::parse_date(h).ok_or_else(|| format!("`{h}` is not a YYYY-MM-DD date"))
            }
            // A bare TOML date (`2026-12-16`, unquoted) is a date too.
            DeValue::Datetime(dt) => match (&dt.date, &dt.time, &dt.offset) {
                (Some(d), None, None) => {
                    NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
                        .ok_or_else(|| format!("`{dt}` is not a calendar date"))
                }
                _ => Err(format!(
                    "`{dt}` has a time of day; a holiday is a whole day in site time: write the \
                     date alone, e.g. \"2026-12-16\""
                )),
            },
            _ => Err("must be a date, e.g. \"2026-12-16\"".to_owned()),
        };
        match date {
            Ok(d) => {
                out.insert(d);
            }
            Err(m) => cx.error(&path!["holidays", i], m),
        }
    }
    out
}

fn devices<'t>(cx: &mut Cx<'t>, v: &'t Spanned<DeValue<'t>>) -> Vec<RelayDevice> {
    let mut seen = BTreeMap::new();
    // Serial port -> the index, id and baud of the first device on it, and the units on it.
    #[allow(clippy::type_complexity)]
    let mut ports: BTreeMap<String, (usize, String, u32, Vec<i64>)> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, raw) in cx.entries::<RawDevice>("relay_devices", v) {
        let at = |k: &str| path!["relay_devices", i, k];
        if cx.non_empty(&at("id"), &raw.id, "a relay device id") {
            cx.unique(&mut seen, &at("id"), &raw.id, i);
        }
        let modbus = ModbusAddr::parse(&raw.modbus).unwrap_or_else(|m| {
            cx.error(&at("modbus"), m);
            ModbusAddr::Tcp {
                host: String::new(),
                port: 0,
            }
        });
        // The devices on one serial port share it (one RS-485 line): one baud, and each
        // board its own unit.
        if let ModbusAddr::Rtu { path: port, baud } = &modbus {
            match ports.get_mut(port) {
                Some((first, first_id, first_baud, _)) if *first_baud != *baud => {
                    let msg = format!(
                        "serial port `{port}` runs at {first_baud} baud for relay device \
                         `{first_id}` (relay_devices[{first}]): every board on one RS-485 line \
                         uses the same baud"
                    );
                    let e = cx.problem(&at("modbus"), msg);
                    cx.refused.push(e);
                }
                Some((first, first_id, _, units)) if units.contains(&raw.unit) => {
                    let msg = format!(
                        "unit {} on serial port `{port}` is already relay device `{first_id}`'s \
                         (relay_devices[{first}]) or another's on that port: each board on one \
                         RS-485 line needs its own unit id",
                        raw.unit
                    );
                    let e = cx.problem(&at("unit"), msg);
                    cx.refused.push(e);
                }
                Some((.., units)) => {
                    units.push(raw.unit);
                }
                None => {
                    ports.insert(port.clone(), (i, raw.id.clone(), *baud, vec![raw.unit]));
                }
            }
        }
        let unit = cx.ranged(&at("unit"), raw.unit, 0, 247);
        let timed_pulse = raw.timed_pulse.map(|t| {
            let tp = |k: &str| path!["relay_devices", i, "timed_pulse", k];
            TimedPulse {
                register_base: cx.ranged(&tp("register_base"), t.register_base, 0, 65535),
                unit_ms: cx.ranged(&tp("unit_ms"), t.unit_ms.unwrap_or(100), 1, 60000),
            }
        });
        out.push(RelayDevice {
            id: raw.id,
            modbus,
            unit,
            timed_pulse,
        });
    }
    out
}

fn doors<'t>(
    cx: &mut Cx<'t>,
    v: &'t Spanned<DeValue<'t>>,
    known: &Known,
    devices: &[RelayDevice],
) -> Vec<Door> {
    let mut seen = BTreeMap::new();
    // reader -> (index, id) of the first door that lists it, shape errors or not.
    let mut first: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (i, item) in raw_items(cx.root.get_ref(), "doors").iter().enumerate() {
        let id = peek_item(item, "id").pop().unwrap_or_default();
        for r in peek_item(item, "readers") {
            first.entry(r).or_insert_with(|| (i, id.clone()));
        }
    }
    let mut coils = BTreeMap::new();
    let mut inputs = BTreeMap::new();
    let mut out = Vec::new();
    for (i, raw) in cx.entries::<RawDoor>("doors", v) {
        let at = |keys: &[&str]| {
            let mut p = path!["doors", i].to_vec();
            p.extend(keys.iter().map(|k| Seg::from(*k)));
            p
        };
        if raw.id == "*" {
            cx.error(
                &at(&["id"]),
                "`*` is reserved: it means every door in a level",
            );
        } else if cx.non_empty(&at(&["id"]), &raw.id, "a door id") {
            cx.unique(&mut seen, &at(&["id"]), &raw.id, i);
        }
        let mut mine = BTreeSet::new();
        for (j, r) in raw.readers.iter().enumerate() {
            let mut p = at(&["readers"]);
            p.push(Seg::Idx(j));
            if !cx.reader_id(&p, r) {
                continue;
            }
            let earlier = first.get(r).filter(|(d, _)| *d < i).map(|(_, id)| id);
            let twice = (!mine.insert(r)).then_some(&raw.id);
            if let Some(other) = earlier.or(twice) {
                let msg = format!(
                    "reader `{r}` is already on door `{other}` (a reader belongs to at most one door)"
                );
                cx.error(&p, msg);
            }
        }
        cx.device_ref(&at(&["relay", "device"]), &raw.relay.device, known);
        if raw.device_timed_pulse
            && known.devices.contains(&raw.relay.device)
            && !known.timed_devices.contains(&raw.relay.device)
        {
            let msg = format!(
                "relay device `{}` has no `timed_pulse` register map: add \
                 `timed_pulse = {{ register_base = N, unit_ms = 100 }}` to it",
                raw.relay.device
            );
            cx.error(&at(&["device_timed_pulse"]), msg);
        }
        let coil = cx.ranged(&at(&["relay", "coil"]), raw.relay.coil, 0, 65535);
        // A board that times pulses is written at `register_base + coil`: past the last
        // register, the write would wrap to another coil's register.
        let base = devices
            .iter()
            .find(|d| d.id == raw.relay.device)
            .and_then(|d| d.timed_pulse)
            .map(|t| t.register_base);
        if raw.device_timed_pulse
            && let Some(base) = base
            && u32::from(base) + u32::from(coil) > 65535
        {
            let msg = format!(
                "coil {coil} on relay device `{}` would be timed through holding register \
                 {base} + {coil} = {}, past the last register 65535: lower the device's \
                 `timed_pulse.register_base` or use a lower coil",
                raw.relay.device,
                u32::from(base) + u32::from(coil)
            );
            let e = cx.problem(&at(&["relay", "coil"]), msg);
            cx.refused.push(e);
        }
        cx.claim(
            &mut coils,
            &at(&["relay", "coil"]),
            &raw.relay.device,
            coil,
            &raw.id,
        );
        let pulse = raw.relay.pulse_ms.unwrap_or(3000);
        let pulse_ms = cx.ranged(&at(&["relay", "pulse_ms"]), pulse, 100, 60_000);
        let contact = raw.contact.map(|c| {
            cx.device_ref(&at(&["contact", "device"]), &c.device, known);
            let input = cx.ranged(&at(&["contact", "input"]), c.input, 0, 65535);
            cx.claim(
                &mut inputs,
                &at(&["contact", "input"]),
                &c.device,
                input,
                &raw.id,
            );
            let held = c.held_open_after_s.unwrap_or(30);
            let held_open_after_s =
                cx.ranged(&at(&["contact", "held_open_after_s"]), held, 1, 86_400);
            Contact {
                device: c.device,
                input,
                held_open_after_s,
            }
        });
        let rex = raw.rex.map(|r| {
            if r.held_open_after_s.is_some() {
                cx.error(
                    &at(&["rex", "held_open_after_s"]),
                    "only a door contact has `held_open_after_s`",
                );
            }
            cx.device_ref(&at(&["rex", "device"]), &r.device, known);
            let input = cx.ranged(&at(&["rex", "input"]), r.input, 0, 65535);
            cx.claim(
                &mut inputs,
                &at(&["rex", "input"]),
                &r.device,
                input,
                &raw.id,
            );
            Rex {
                device: r.device,
                input,
            }
        });
        out.push(Door {
            id: DoorId(raw.id.clone()),
            name: raw.name.unwrap_or_else(|| raw.id.clone()),
            readers: raw.readers.into_iter().map(ReaderId).collect(),
            relay: Relay {
                device: raw.relay.device,
                coil,
                pulse_ms,
            },
            contact,
            rex,
            device_timed_pulse: raw.device_timed_pulse,
        });
    }
    out
}

fn schedules<'t>(cx: &mut Cx<'t>, v: &'t Spanned<DeValue<'t>>) -> BTreeMap<String, Window> {
    let mut out = BTreeMap::new();
    let Some(table) = v.get_ref().as_table() else {
        cx.error(
            &path!["schedules"],
            "must be a table of name = [cron windows]",
        );
        return out;
    };
    for (name, exprs) in table.iter() {
        let name: &str = name.get_ref();
        let Some(list) = cx.de::<Vec<String>>(&path!["schedules", name], exprs) else {
            continue;
        };
        if list.is_empty() {
            cx.error(
                &path!["schedules", name],
                "a schedule needs at least one cron window",
            );
        }
        let mut parsed = Vec::new();
        for (j, e) in list.iter().enumerate() {
            match schedule::parse_expr(e) {
                Ok(s) => {
                    if let Some(w) = schedule::never_matches(e, &s) {
                        cx.warn(&path!["schedules", name, j], w);
                    }
                    parsed.push(s)
                }
                Err(m) => cx.error(&path!["schedules", name, j], m),
            }
            for w in [schedule::numeric_weekdays(e), schedule::both_day_fields(e)]
                .into_iter()
                .flatten()
            {
                cx.warn(&path!["schedules", name, j], w);
            }
        }
        out.insert(name.to_owned(), Window::from_schedules(parsed));
    }
    out
}

fn levels<'t>(cx: &mut Cx<'t>, v: &'t Spanned<DeValue<'t>>, known: &Known) -> Vec<Level> {
    let mut seen = BTreeMap::new();
    let mut out = Vec::new();
    for (i, raw) in cx.entries::<RawLevel>("levels", v) {
        let at = |k: &str| path!["levels", i, k];
        if cx.non_empty(&at("name"), &raw.name, "a level name") {
            cx.unique(&mut seen, &at("name"), &raw.name, i);
        }
        let mut doors = Vec::new();
        for (j, d) in raw.doors.iter().enumerate() {
            let p = path!["levels", i, "doors", j];
            if d == "*" && raw.doors.len() > 1 {
                cx.error(&p, "`*` (every door) must be the only entry");
            } else if d != "*" && !known.doors.contains(d) {
                cx.error(&p, format!("unknown door `{d}`"));
            }
            doors.push(DoorId(d.clone()));
        }
        if !known.schedules.contains(&raw.schedule) {
            cx.error(
                &at("schedule"),
                format!("unknown schedule `{}`", raw.schedule),
            );
        }
        let all = raw.doors.iter().any(|d| d == "*");
        out.push(Level {
            name: raw.name,
            doors: if all {
                LevelDoors::All
            } else {
                LevelDoors::Only(doors)
            },
            schedule: raw.schedule,
            respect_holidays: raw.respect_holidays,
        });
    }
    out
}

fn unlocks<'t>(
    cx: &mut Cx<'t>,
    v: &'t Spanned<DeValue<'t>>,
    known: &Known,
    holidays: bool,
    doors: &[Door],
    devices: &[RelayDevice],
) -> Vec<UnlockWindow> {
    let mut out = Vec::new();
    for (i, raw) in cx.entries::<RawUnlock>("unlock_windows", v) {
        // A site that lists holidays and a window that does not say: the door rests unlocked
        // on a holiday too, which an operator closing the building that day rarely means.
        if holidays && raw.respect_holidays.is_none() {
            cx.warn(
                &path!["unlock_windows", i],
                format!(
                    "the unlock window of door `{}` also unlocks it on the site's holidays: \
                     set `respect_holidays = true` to keep it locked then, or `false` to say \
                     that it is meant",
                    raw.door
                ),
            );
        }
        if !known.doors.contains(&raw.door) {
            cx.error(
                &path!["unlock_windows", i, "door"],
                format!("unknown door `{}`", raw.door),
            );
        }
        if !known.schedules.contains(&raw.schedule) {
            let msg = format!("unknown schedule `{}`", raw.schedule);
            cx.error(&path!["unlock_windows", i, "schedule"], msg);
        }
        let lease_s = raw.lease_s.map(|n| {
            lease(
                cx,
                &path!["unlock_windows", i, "lease_s"],
                n,
                &raw.door,
                doors,
                devices,
            )
        });
        out.push(UnlockWindow {
            door: DoorId(raw.door),
            schedule: raw.schedule,
            respect_holidays: raw.respect_holidays.unwrap_or(false),
            lock_on_stop: raw.lock_on_stop,
            lease_s,
        });
    }
    out
}

/// An unlock window's `lease_s`: in range, and its door's board able to time it (a
/// `timed_pulse` map, its register within 65535, the lease within the timer's count).
fn lease(
    cx: &mut Cx<'_>,
    path: &[Seg],
    n: i64,
    door: &str,
    doors: &[Door],
    devices: &[RelayDevice],
) -> u32 {
    let secs: u32 = cx.ranged(path, n, 3, 3600);
    let Some(d) = doors.iter().find(|d| d.id.0 == door) else {
        return secs; // the unknown door is reported on its own key
    };
    let Some(dev) = devices.iter().find(|x| x.id == d.relay.device) else {
        return secs;
    };
    let Some(timer) = dev.timed_pulse else {
        cx.error(
            path,
            format!(
                "door `{door}`'s relay device `{}` has no `timed_pulse` register map to hold \
                 a lease on: add `timed_pulse = {{ register_base = N, unit_ms = 100 }}` to it, \
                 or remove `lease_s`",
                dev.id
            ),
        );
        return secs;
    };
    let unit = u64::from(timer.unit_ms.max(1));
    let units = u64::from(secs) * 1000 / unit;
    if u32::from(timer.register_base) + u32::from(d.relay.coil) > 65535 {
        let msg = format!(
            "door `{door}`'s coil {} would be timed through holding register {} + {} = {}, \
             past the last register 65535",
            d.relay.coil,
            timer.register_base,
            d.relay.coil,
            u32::from(timer.register_base) + u32::from(d.relay.coil)
        );
        cx.error(path, msg);
    } else if (3..=3600).contains(&n) && u64::from(secs) * 1000 % unit != 0 {
        // The board counts whole units: it would hold the door longer than the lease says.
        let msg = format!(
            "a lease of {secs} s is not a whole number of the board's {} ms timer units: \
             the board would hold the door unlocked up to {} s after the gateway went silent; \
             make it a multiple of {} s",
            timer.unit_ms,
            (u64::from(secs) * 1000).div_ceil(unit) * unit / 1000,
            unit as f64 / 1000.0
        );
        cx.error(path, msg);
    } else if (3..=3600).contains(&n) && units > u64::from(u16::MAX) {
        let msg = format!(
            "a lease of {secs} s is {units} units of the board's {} ms timer, past the \
             register's 65535: shorten it",
            timer.unit_ms
        );
        cx.error(path, msg);
    }
    secs
}

fn zones<'t>(cx: &mut Cx<'t>, v: &'t Spanned<DeValue<'t>>, known: &Known) -> Vec<Zone> {
    let mut seen = BTreeMap::new();
    let mut placed: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, raw) in cx.entries::<RawZone>("zones", v) {
        if cx.non_empty(&path!["zones", i, "name"], &raw.name, "a zone name") {
            cx.unique(&mut seen, &path!["zones", i, "name"], &raw.name, i);
        }
        for (list, readers) in [
            ("entry_readers", &raw.entry_readers),
            ("exit_readers", &raw.exit_readers),
        ] {
            for (j, r) in readers.iter().enumerate() {
                let p = path!["zones", i, list, j];
                if !cx.reader_id(&p, r) {
                    continue;
                }
                if let Some(first) = placed.insert(r.clone(), key_of(&p)) {
                    cx.error(
                        &p,
                        format!(
                            "reader `{r}` is already in {first} (a reader has one zone movement)"
                        ),
                    );
                }
                if !known.readers.contains(r) {
                    let msg = format!(
                        "reader `{r}` is on no door: it makes no door decisions, so this zone never sees its movements"
                    );
                    cx.warn(&p, msg);
                }
            }
        }
        // A zone that never sees an entry decides nothing; a hard one that never sees an exit
        // denies everyone's second entry for good (an exit button records no movement). Refused
        // for a new activation only: a document already in the log reads as it did.
        let zone_problem = if raw.entry_readers.is_empty() {
            Some((
                "entry_readers",
                "a zone needs at least one entry reader: with none it never sees anyone enter"
                    .to_owned(),
            ))
        } else if raw.exit_readers.is_empty() && raw.anti_passback == AntiPassback::Hard {
            Some((
                "exit_readers",
                "a hard anti-passback zone needs at least one exit reader: with none no exit is \
                 ever recorded (an exit button records no movement), so everyone is denied \
                 `anti_passback` from their second entry on, for good; list the readers people \
                 leave by, or use `anti_passback = \"soft\"`"
                    .to_owned(),
            ))
        } else {
            None
        };
        if let Some((list, msg)) = zone_problem {
            let e = cx.problem(&path!["zones", i, list], msg);
            cx.refused.push(e);
        }
        out.push(Zone {
            name: raw.name,
            entry_readers: raw.entry_readers.into_iter().map(ReaderId).collect(),
            exit_readers: raw.exit_readers.into_iter().map(ReaderId).collect(),
            anti_passback: raw.anti_passback,
        });
    }
    out
}
