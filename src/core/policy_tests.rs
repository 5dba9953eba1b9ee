//! Decision tables and validation cases of the site policy (SPEC 6).
//!
//! Decisions: rows of (levels, door, reader, instant, metadata, mode, zone state) → verdict
//! against one fixture site in Asia/Almaty (UTC+5, no DST). Validation: one case per rule, each
//! asserting the key and the line of the error.

use super::*;
use serde_json::json;

const EXAMPLE: &str = include_str!("../../config/site.toml");

const ACME: &str = "11111111-1111-4111-8111-111111111111";
const BETA: &str = "22222222-2222-4222-8222-222222222222";
const GAMMA: &str = "33333333-3333-4333-8333-333333333333";

/// The decision fixture; `{partners}` and `{tz}` are filled in by [`site`].
const SITE: &str = r#"
timezone = "{tz}"
partners = {partners}
holidays = ["2026-12-16"]

[[relay_devices]]
id = "board-1"
modbus = "tcp://127.0.0.1:5020"

[[doors]]
id = "main"
readers = ["main-in", "main-out"]
relay = { device = "board-1", coil = 0 }

[[doors]]
id = "lab"
readers = ["lab-1"]
relay = { device = "board-1", coil = 1 }

[[doors]]
id = "vault"
readers = ["vault-1"]
relay = { device = "board-1", coil = 2 }

[[doors]]
id = "gate"
readers = ["gate-in", "gate-out"]
relay = { device = "board-1", coil = 3 }

[schedules]
business = ["* * 8-17 * * Mon-Fri"]
always = ["* * * * * *"]
nights = ["* * 22-23 * * *", "* * 0-5 * * *"]
dst = ["* * 2-3 * * *"]

[[levels]]
name = "staff"
doors = ["main", "lab", "gate"]
schedule = "business"
respect_holidays = true

[[levels]]
name = "admin"
doors = ["*"]
schedule = "always"

[[levels]]
name = "cleaner"
doors = ["main", "lab"]
schedule = "nights"

[[levels]]
name = "guard"
doors = ["main", "gate"]
schedule = "always"
respect_holidays = true

[[levels]]
name = "night-shift"
doors = ["*"]
schedule = "dst"

[[unlock_windows]]
door = "main"
schedule = "business"
respect_holidays = true

[[unlock_windows]]
door = "lab"
schedule = "business"

[[zones]]
name = "campus"
entry_readers = ["gate-in"]
exit_readers = ["gate-out"]
anti_passback = "hard"

[[zones]]
name = "lobby"
entry_readers = ["main-in"]
exit_readers = ["main-out"]
anti_passback = "soft"
"#;

fn site_in(tz: &str, partners: &str) -> Policy {
    let text = SITE.replace("{tz}", tz).replace("{partners}", partners);
    Policy::parse(&text).unwrap_or_else(|e| panic!("fixture: {e:#?}"))
}

fn site() -> Policy {
    site_in("Asia/Almaty", &format!(r#"["{ACME}", "Beta Corp"]"#))
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[derive(Clone, Copy, Debug)]
enum Who {
    NoMatch,
    Erased,
    /// A user of this partner (id, name).
    User(&'static str, &'static str),
}

/// One row of a decision table.
#[derive(Clone, Debug)]
struct Row {
    name: &'static str,
    who: Who,
    door: &'static str,
    reader: &'static str,
    at: &'static str,
    meta: Option<Value>,
    mode: SiteMode,
    last: Option<Direction>,
}

/// A user of partner ACME with `access_level = levels`, at `door` (its first reader).
fn row(name: &'static str, levels: Value, door: &'static str, at: &'static str) -> Row {
    let reader = match door {
        "main" => "main-in",
        "lab" => "lab-1",
        "vault" => "vault-1",
        "gate" => "gate-in",
        _ => "nowhere",
    };
    Row {
        name,
        who: Who::User(ACME, "Acme"),
        door,
        reader,
        at,
        meta: Some(json!({ "access_level": levels })),
        mode: SiteMode::Normal,
        last: None,
    }
}

impl Row {
    fn who(mut self, who: Who) -> Row {
        self.who = who;
        self
    }
    fn meta(mut self, meta: Value) -> Row {
        self.meta = Some(meta);
        self
    }
    fn no_meta(mut self) -> Row {
        self.meta = None;
        self
    }
    /// Adds `key = value` to the metadata.
    fn with(mut self, key: &str, value: Value) -> Row {
        let mut m = self.meta.take().unwrap_or_else(|| json!({}));
        m[key] = value;
        self.meta = Some(m);
        self
    }
    fn mode(mut self, mode: SiteMode) -> Row {
        self.mode = mode;
        self
    }
    fn reader(mut self, reader: &'static str) -> Row {
        self.reader = reader;
        self
    }
    fn last(mut self, last: Direction) -> Row {
        self.last = Some(last);
        self
    }
}

fn grant(level: &str) -> Verdict {
    Verdict::Granted {
        level: level.to_owned(),
        passback_violation: false,
    }
}

fn violation(level: &str) -> Verdict {
    Verdict::Granted {
        level: level.to_owned(),
        passback_violation: true,
    }
}

fn deny(reason: DenyReason) -> Verdict {
    Verdict::Denied {
        reason,
        level: None,
    }
}

fn deny_by(reason: DenyReason, level: &str) -> Verdict {
    Verdict::Denied {
        reason,
        level: Some(level.to_owned()),
    }
}

fn decide_row(policy: &Policy, row: &Row) -> Verdict {
    let door = DoorId(row.door.to_owned());
    let reader = ReaderId(row.reader.to_owned());
    let external = ExternalId("u-1".to_owned());
    let who = match row.who {
        Who::NoMatch => Identified::NoMatch,
        Who::Erased => Identified::Erased,
        Who::User(id, name) => Identified::User(Subject {
            partner_id: PartnerId::parse(id).unwrap(),
            partner_name: name,
            external_id: &external,
            metadata: row.meta.as_ref(),
        }),
    };
    policy.decide(&Request {
        door: &door,
        reader: &reader,
        who,
        at: utc(row.at),
        mode: row.mode,
        last_in_zone: row.last,
    })
}

fn run(policy: &Policy, table: &[(Row, Verdict)]) {
    let mut failures = Vec::new();
    for (i, (row, want)) in table.iter().enumerate() {
        let got = decide_row(policy, row);
        if &got != want {
            failures.push(format!(
                "row {i} `{}`: got {got:?}, want {want:?}",
                row.name
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// Instants (Almaty = UTC+5). 2026-06-01 is a Monday, 2026-06-06 a Saturday, 2026-12-16
// (a holiday) a Wednesday.
const MON_10: &str = "2026-06-01T05:00:00Z";
const MON_03: &str = "2026-05-31T22:00:00Z";
const SAT_10: &str = "2026-06-06T05:00:00Z";
const HOLIDAY_10: &str = "2026-12-16T05:00:00Z";

use DenyReason::*;

#[test]
fn every_deny_reason_and_a_grant() {
    let table = [
        (
            row("granted", json!("staff"), "lab", MON_10),
            grant("staff"),
        ),
        (
            row("no match", json!("admin"), "lab", MON_10).who(Who::NoMatch),
            deny(NoMatch),
        ),
        (
            row("erased", json!("admin"), "lab", MON_10).who(Who::Erased),
            deny(UserErased),
        ),
        (
            row("lockdown", json!("admin"), "lab", MON_10).mode(SiteMode::Lockdown),
            deny(Lockdown),
        ),
        (
            row("partner", json!("admin"), "lab", MON_10).who(Who::User(GAMMA, "Gamma")),
            deny(PartnerNotAllowed),
        ),
        (
            row("not yet", json!("admin"), "lab", MON_10).with("valid_from", json!("2026-06-02")),
            deny(NotYetValid),
        ),
        (
            row("expired", json!("admin"), "lab", MON_10).with("valid_until", json!("2026-05-31")),
            deny(Expired),
        ),
        (
            row("no level", json!(null), "lab", MON_10),
            deny(NoAccessLevel),
        ),
        (
            row("unknown", json!("ghost"), "lab", MON_10),
            deny_by(UnknownAccessLevel, "ghost"),
        ),
        (
            row("not in level", json!("staff"), "vault", MON_10),
            deny_by(DoorNotInLevel, "staff"),
        ),
        (
            row("holiday", json!("staff"), "lab", HOLIDAY_10),
            deny_by(Holiday, "staff"),
        ),
        (
            row("outside", json!("staff"), "lab", SAT_10),
            deny_by(OutsideSchedule, "staff"),
        ),
        (
            row("passback", json!("guard"), "gate", MON_10).last(Direction::Entry),
            deny_by(AntiPassback, "guard"),
        ),
    ];
    run(&site(), &table);
    let covered: BTreeSet<&str> = table
        .iter()
        .filter_map(|(_, v)| v.reason())
        .map(DenyReason::as_str)
        .collect();
    assert_eq!(covered.len(), DenyReason::ALL.len(), "{covered:?}");
}

#[test]
fn checks_run_in_spec_order() {
    let table = [
        // no_match / user_erased come before lockdown.
        (
            row("no match in lockdown", json!("admin"), "lab", MON_10)
                .who(Who::NoMatch)
                .mode(SiteMode::Lockdown),
            deny(NoMatch),
        ),
        (
            row("erased in lockdown", json!("admin"), "lab", MON_10)
                .who(Who::Erased)
                .mode(SiteMode::Lockdown),
            deny(UserErased),
        ),
        // lockdown before everything else, a would-be grant included.
        (
            row("lockdown, admin", json!("admin"), "vault", MON_10).mode(SiteMode::Lockdown),
            deny(Lockdown),
        ),
        (
            row("lockdown, bad partner", json!("ghost"), "lab", SAT_10)
                .who(Who::User(GAMMA, "Gamma"))
                .with("valid_until", json!("2020-01-01"))
                .mode(SiteMode::Lockdown),
            deny(Lockdown),
        ),
        // partner before validity.
        (
            row("partner, expired", json!("admin"), "lab", MON_10)
                .who(Who::User(GAMMA, "Gamma"))
                .with("valid_until", json!("2020-01-01")),
            deny(PartnerNotAllowed),
        ),
        // validity before level present.
        (
            row("expired, no level", json!(null), "lab", MON_10)
                .with("valid_until", json!("2020-01-01")),
            deny(Expired),
        ),
        (
            row("not yet, no level", json!(null), "lab", MON_10)
                .with("valid_from", json!("2030-01-01")),
            deny(NotYetValid),
        ),
        // level present before level known.
        (
            row("no level at all", json!([]), "lab", MON_10),
            deny(NoAccessLevel),
        ),
        // door before holiday, holiday before schedule, schedule before anti-passback.
        (
            row("door, holiday", json!("staff"), "vault", HOLIDAY_10),
            deny_by(DoorNotInLevel, "staff"),
        ),
        (
            row(
                "holiday, night",
                json!("staff"),
                "lab",
                "2026-12-15T22:00:00Z",
            ),
            deny_by(Holiday, "staff"),
        ),
        (
            row("schedule, passback", json!("staff"), "gate", SAT_10).last(Direction::Entry),
            deny_by(OutsideSchedule, "staff"),
        ),
    ];
    run(&site(), &table);
}

#[test]
fn access_level_shapes() {
    let table = [
        (
            row("string", json!("admin"), "vault", MON_10),
            grant("admin"),
        ),
        (
            row("list of one", json!(["admin"]), "vault", MON_10),
            grant("admin"),
        ),
        (
            row("missing metadata", json!(null), "lab", MON_10).no_meta(),
            deny(NoAccessLevel),
        ),
        (
            row("metadata without level", json!(null), "lab", MON_10).meta(json!({"team": "x"})),
            deny(NoAccessLevel),
        ),
        (
            row("metadata not an object", json!(null), "lab", MON_10).meta(json!("admin")),
            deny(NoAccessLevel),
        ),
        (row("null", json!(null), "lab", MON_10), deny(NoAccessLevel)),
        (
            row("empty string", json!(""), "lab", MON_10),
            deny(NoAccessLevel),
        ),
        (
            row("empty list", json!([]), "lab", MON_10),
            deny(NoAccessLevel),
        ),
        (
            row("list of blanks", json!(["", null]), "lab", MON_10),
            deny(NoAccessLevel),
        ),
        (
            row("a number", json!(7), "lab", MON_10),
            deny(UnknownAccessLevel),
        ),
        (
            row("an object", json!({"name": "admin"}), "lab", MON_10),
            deny(UnknownAccessLevel),
        ),
        (
            row("blank then known", json!(["", "admin"]), "lab", MON_10),
            grant("admin"),
        ),
        (
            row("case matters", json!("Admin"), "lab", MON_10),
            deny_by(UnknownAccessLevel, "Admin"),
        ),
    ];
    run(&site(), &table);
}

#[test]
fn several_levels() {
    let table = [
        (
            row(
                "grant by the second",
                json!(["cleaner", "staff"]),
                "lab",
                MON_10,
            ),
            grant("staff"),
        ),
        (
            row(
                "grant by the first that grants",
                json!(["ghost", "staff", "admin"]),
                "lab",
                MON_10,
            ),
            grant("staff"),
        ),
        (
            row(
                "admin named when first",
                json!(["admin", "staff"]),
                "lab",
                MON_10,
            ),
            grant("admin"),
        ),
        (
            row(
                "night: the cleaner grants",
                json!(["staff", "cleaner"]),
                "lab",
                MON_03,
            ),
            grant("cleaner"),
        ),
        // staff: outside_schedule (3 checks passed) beats guard: door_not_in_level (1), in
        // either order.
        (
            row("most checks wins", json!(["staff", "guard"]), "lab", SAT_10),
            deny_by(OutsideSchedule, "staff"),
        ),
        (
            row(
                "most checks wins, reversed",
                json!(["guard", "staff"]),
                "lab",
                SAT_10,
            ),
            deny_by(OutsideSchedule, "staff"),
        ),
        // An unknown level passes 0 checks.
        (
            row("unknown loses", json!(["ghost", "staff"]), "vault", MON_10),
            deny_by(DoorNotInLevel, "staff"),
        ),
        (
            row(
                "all unknown: the first",
                json!(["ghost", "phantom"]),
                "lab",
                MON_10,
            ),
            deny_by(UnknownAccessLevel, "ghost"),
        ),
        // Ties: the first in the list.
        (
            row("tie", json!(["staff", "cleaner"]), "vault", MON_10),
            deny_by(DoorNotInLevel, "staff"),
        ),
        (
            row("tie reversed", json!(["cleaner", "staff"]), "vault", MON_10),
            deny_by(DoorNotInLevel, "cleaner"),
        ),
        (
            row(
                "tie on schedule",
                json!(["staff", "cleaner"]),
                "lab",
                SAT_10,
            ),
            deny_by(OutsideSchedule, "staff"),
        ),
        // holiday (2) vs schedule (3): the schedule failure passed more checks.
        (
            row(
                "holiday vs schedule",
                json!(["staff", "cleaner"]),
                "lab",
                HOLIDAY_10,
            ),
            deny_by(OutsideSchedule, "cleaner"),
        ),
        // anti-passback (4) beats outside_schedule (3).
        (
            row(
                "passback vs schedule",
                json!(["staff", "guard"]),
                "gate",
                SAT_10,
            )
            .last(Direction::Entry),
            deny_by(AntiPassback, "guard"),
        ),
    ];
    run(&site(), &table);
}

#[test]
fn wildcard_doors_and_partners() {
    let table = [
        (
            row("* covers every door", json!("admin"), "vault", SAT_10),
            grant("admin"),
        ),
        (
            row("* covers the gate", json!("admin"), "gate", SAT_10).reader("gate-out"),
            grant("admin"),
        ),
        (
            row("* is not an unknown door", json!("admin"), "attic", SAT_10),
            deny_by(DoorNotInLevel, "admin"),
        ),
        (
            row("partner by id", json!("admin"), "lab", MON_10).who(Who::User(ACME, "renamed")),
            grant("admin"),
        ),
        (
            row("partner by name", json!("admin"), "lab", MON_10).who(Who::User(BETA, "Beta Corp")),
            grant("admin"),
        ),
        (
            row("name is exact", json!("admin"), "lab", MON_10).who(Who::User(BETA, "beta corp")),
            deny(PartnerNotAllowed),
        ),
        (
            row("neither", json!("admin"), "lab", MON_10).who(Who::User(GAMMA, "Gamma")),
            deny(PartnerNotAllowed),
        ),
    ];
    run(&site(), &table);
    let open = site_in("Asia/Almaty", r#"["*"]"#);
    assert_eq!(open.partners, Partners::All);
    run(
        &open,
        &[(
            row("* admits all", json!("admin"), "lab", MON_10).who(Who::User(GAMMA, "Gamma")),
            grant("admin"),
        )],
    );
    let closed = site_in("Asia/Almaty", "[]");
    run(
        &closed,
        &[(
            row("[] admits none", json!("admin"), "lab", MON_10),
            deny(PartnerNotAllowed),
        )],
    );
}

#[test]
fn holidays_are_site_zone_dates() {
    let table = [
        (
            row("respecting level", json!("guard"), "main", HOLIDAY_10),
            deny_by(Holiday, "guard"),
        ),
        (
            row(
                "level ignoring holidays",
                json!("admin"),
                "main",
                HOLIDAY_10,
            ),
            grant("admin"),
        ),
        // 2026-12-15 19:00 UTC is already the 16th, 00:00, in Almaty.
        (
            row(
                "holiday starts at local midnight",
                json!("guard"),
                "main",
                "2026-12-15T19:00:00Z",
            ),
            deny_by(Holiday, "guard"),
        ),
        (
            row(
                "the evening before",
                json!("guard"),
                "main",
                "2026-12-15T18:59:59Z",
            ),
            grant("guard"),
        ),
        (
            row(
                "holiday ends at local midnight",
                json!("guard"),
                "main",
                "2026-12-16T18:59:59Z",
            ),
            deny_by(Holiday, "guard"),
        ),
        (
            row(
                "the day after",
                json!("guard"),
                "main",
                "2026-12-16T19:00:00Z",
            ),
            grant("guard"),
        ),
        (
            row(
                "a working day",
                json!("staff"),
                "main",
                "2026-12-17T05:00:00Z",
            ),
            grant("staff"),
        ),
    ];
    run(&site(), &table);
}

#[test]
fn business_hours_in_almaty() {
    let table = [
        (
            row("07:59:59", json!("staff"), "lab", "2026-06-01T02:59:59Z"),
            deny_by(OutsideSchedule, "staff"),
        ),
        (
            row("08:00:00", json!("staff"), "lab", "2026-06-01T03:00:00Z"),
            grant("staff"),
        ),
        (
            row("17:59:59", json!("staff"), "lab", "2026-06-01T12:59:59Z"),
            grant("staff"),
        ),
        (
            row("18:00:00", json!("staff"), "lab", "2026-06-01T13:00:00Z"),
            deny_by(OutsideSchedule, "staff"),
        ),
        (
            row("Saturday", json!("staff"), "lab", SAT_10),
            deny_by(OutsideSchedule, "staff"),
        ),
        (
            row(
                "Sunday 23:00 UTC = Monday 04:00 local, cleaner",
                json!("cleaner"),
                "lab",
                "2026-05-31T23:00:00Z",
            ),
            grant("cleaner"),
        ),
        (
            row(
                "cleaner at 06:00 local",
                json!("cleaner"),
                "lab",
                "2026-06-01T01:00:00Z",
            ),
            deny_by(OutsideSchedule, "cleaner"),
        ),
        (
            row(
                "cleaner at 22:00 local",
                json!("cleaner"),
                "lab",
                "2026-06-01T17:00:00Z",
            ),
            grant("cleaner"),
        ),
    ];
    run(&site(), &table);
}

#[test]
fn dst_in_berlin_and_new_york() {
    // `night-shift` = `* * 2-3 * * *` in the site zone.
    let berlin = site_in("Europe/Berlin", r#"["*"]"#);
    let level = || json!("night-shift");
    let table = [
        // Spring forward 2026-03-29 at 01:00 UTC: 02:xx never happens, 03:xx CEST = 01:xx UTC.
        (
            row(
                "spring 00:59:59Z = 01:59:59 CET",
                level(),
                "vault",
                "2026-03-29T00:59:59Z",
            ),
            deny_by(OutsideSchedule, "night-shift"),
        ),
        (
            row(
                "spring 01:00Z = 03:00 CEST",
                level(),
                "vault",
                "2026-03-29T01:00:00Z",
            ),
            grant("night-shift"),
        ),
        (
            row(
                "spring 01:59:59Z = 03:59:59 CEST",
                level(),
                "vault",
                "2026-03-29T01:59:59Z",
            ),
            grant("night-shift"),
        ),
        (
            row(
                "spring 02:00Z = 04:00 CEST",
                level(),
                "vault",
                "2026-03-29T02:00:00Z",
            ),
            deny_by(OutsideSchedule, "night-shift"),
        ),
        // Fall back 2026-10-25 at 01:00 UTC: 02:xx twice, then 03:xx CET; 00:00–02:59:59 UTC.
        (
            row(
                "fall 23:59:59Z = 01:59:59 CEST",
                level(),
                "vault",
                "2026-10-24T23:59:59Z",
            ),
            deny_by(OutsideSchedule, "night-shift"),
        ),
        (
            row(
                "fall 00:00Z = 02:00 CEST",
                level(),
                "vault",
                "2026-10-25T00:00:00Z",
            ),
            grant("night-shift"),
        ),
        (
            row(
                "fall 01:30Z = 02:30 CET",
                level(),
                "vault",
                "2026-10-25T01:30:00Z",
            ),
            grant("night-shift"),
        ),
        (
            row(
                "fall 02:59:59Z = 03:59:59 CET",
                level(),
                "vault",
                "2026-10-25T02:59:59Z",
            ),
            grant("night-shift"),
        ),
        (
            row(
                "fall 03:00Z = 04:00 CET",
                level(),
                "vault",
                "2026-10-25T03:00:00Z",
            ),
            deny_by(OutsideSchedule, "night-shift"),
        ),
    ];
    run(&berlin, &table);

    let ny = site_in("America/New_York", r#"["*"]"#);
    let table = [
        // 2026-03-06 (Fri) EST = UTC-5, 2026-03-09 (Mon) EDT = UTC-4.
        (
            row(
                "EST 07:59:59",
                json!("staff"),
                "lab",
                "2026-03-06T12:59:59Z",
            ),
            deny_by(OutsideSchedule, "staff"),
        ),
        (
            row("EST 08:00", json!("staff"), "lab", "2026-03-06T13:00:00Z"),
            grant("staff"),
        ),
        (
            row(
                "EDT 07:59:59",
                json!("staff"),
                "lab",
                "2026-03-09T11:59:59Z",
            ),
            deny_by(OutsideSchedule, "staff"),
        ),
        (
            row("EDT 08:00", json!("staff"), "lab", "2026-03-09T12:00:00Z"),
            grant("staff"),
        ),
        (
            row(
                "EDT 17:59:59",
                json!("staff"),
                "lab",
                "2026-03-09T21:59:59Z",
            ),
            grant("staff"),
        ),
        (
            row("EDT 18:00", json!("staff"), "lab", "2026-03-09T22:00:00Z"),
            deny_by(OutsideSchedule, "staff"),
        ),
        // Spring forward 2026-03-08 at 07:00 UTC: 02:xx never happens; 03:xx EDT = 07:xx UTC.
        (
            row(
                "NY spring 06:59:59Z = 01:59:59 EST",
                level(),
                "vault",
                "2026-03-08T06:59:59Z",
            ),
            deny_by(OutsideSchedule, "night-shift"),
        ),
        (
            row(
                "NY spring 07:00Z = 03:00 EDT",
                level(),
                "vault",
                "2026-03-08T07:00:00Z",
            ),
            grant("night-shift"),
        ),
        (
            row(
                "NY spring 08:00Z = 04:00 EDT",
                level(),
                "vault",
                "2026-03-08T08:00:00Z",
            ),
            deny_by(OutsideSchedule, "night-shift"),
        ),
        // Fall back 2026-11-01 at 06:00 UTC: 01:xx twice; 02:xx EST = 07:xx UTC, 03:xx = 08:xx.
        (
            row(
                "NY fall 05:59:59Z = 01:59:59 EDT",
                level(),
                "vault",
                "2026-11-01T05:59:59Z",
            ),
            deny_by(OutsideSchedule, "night-shift"),
        ),
        (
            row(
                "NY fall 06:30Z = 01:30 EST",
                level(),
                "vault",
                "2026-11-01T06:30:00Z",
            ),
            deny_by(OutsideSchedule, "night-shift"),
        ),
        (
            row(
                "NY fall 07:00Z = 02:00 EST",
                level(),
                "vault",
                "2026-11-01T07:00:00Z",
            ),
            grant("night-shift"),
        ),
        (
            row(
                "NY fall 08:59:59Z = 03:59:59 EST",
                level(),
                "vault",
                "2026-11-01T08:59:59Z",
            ),
            grant("night-shift"),
        ),
        (
            row(
                "NY fall 09:00Z = 04:00 EST",
                level(),
                "vault",
                "2026-11-01T09:00:00Z",
            ),
            deny_by(OutsideSchedule, "night-shift"),
        ),
    ];
    run(&ny, &table);
}

#[test]
fn validity_windows() {
    let admin = || row("", json!("admin"), "lab", MON_10);
    let r = |name: &'static str, at: &'static str, key: &str, v: Value| {
        let mut row = admin().with(key, v);
        row.name = name;
        row.at = at;
        row
    };
    let table = [
        // Dates are site-zone days: valid_from 2026-06-02 starts at 2026-06-01T19:00Z.
        (
            r(
                "from date, the evening before",
                "2026-06-01T18:59:59Z",
                "valid_from",
                json!("2026-06-02"),
            ),
            deny(NotYetValid),
        ),
        (
            r(
                "from date, local midnight",
                "2026-06-01T19:00:00Z",
                "valid_from",
                json!("2026-06-02"),
            ),
            grant("admin"),
        ),
        (
            r(
                "until date, last second",
                "2026-06-01T18:59:59Z",
                "valid_until",
                json!("2026-06-01"),
            ),
            grant("admin"),
        ),
        (
            r(
                "until date, next local day",
                "2026-06-01T19:00:00Z",
                "valid_until",
                json!("2026-06-01"),
            ),
            deny(Expired),
        ),
        // Instants, inclusive at both ends.
        (
            r(
                "from instant, before",
                "2026-06-01T04:59:59Z",
                "valid_from",
                json!("2026-06-01T10:00:00+05:00"),
            ),
            deny(NotYetValid),
        ),
        (
            r(
                "from instant, at",
                "2026-06-01T05:00:00Z",
                "valid_from",
                json!("2026-06-01T10:00:00+05:00"),
            ),
            grant("admin"),
        ),
        (
            r(
                "until instant, at",
                "2026-06-01T05:00:00Z",
                "valid_until",
                json!("2026-06-01T05:00:00Z"),
            ),
            grant("admin"),
        ),
        (
            r(
                "until instant, after",
                "2026-06-01T05:00:01Z",
                "valid_until",
                json!("2026-06-01T05:00:00Z"),
            ),
            deny(Expired),
        ),
        // Unparseable: fail closed.
        (
            r("bad from", MON_10, "valid_from", json!("soon")),
            deny(NotYetValid),
        ),
        (
            r("bad until", MON_10, "valid_until", json!("2026-02-30")),
            deny(Expired),
        ),
        (
            r("numeric until", MON_10, "valid_until", json!(1780000000)),
            deny(Expired),
        ),
        // null is absent.
        (
            r("null from", MON_10, "valid_from", json!(null)),
            grant("admin"),
        ),
        (
            r("null until", MON_10, "valid_until", json!(null)),
            grant("admin"),
        ),
        // Both bounds.
        (
            admin()
                .with("valid_from", json!("2026-01-01"))
                .with("valid_until", json!("2026-12-31")),
            grant("admin"),
        ),
        (
            admin()
                .with("valid_from", json!("2027-01-01"))
                .with("valid_until", json!("2020-01-01")),
            deny(NotYetValid),
        ),
    ];
    run(&site(), &table);
}

#[test]
fn anti_passback() {
    let guard = |reader: &'static str| row("", json!("guard"), "gate", MON_10).reader(reader);
    let staff = |reader: &'static str| row("", json!("staff"), "main", MON_10).reader(reader);
    let table = [
        // Hard zone `campus`.
        (guard("gate-in"), grant("guard")),
        (guard("gate-in").last(Direction::Exit), grant("guard")),
        (
            guard("gate-in").last(Direction::Entry),
            deny_by(AntiPassback, "guard"),
        ),
        (guard("gate-out").last(Direction::Entry), grant("guard")),
        (
            guard("gate-out").last(Direction::Exit),
            deny_by(AntiPassback, "guard"),
        ),
        // Soft zone `lobby`: granted, flagged.
        (staff("main-in").last(Direction::Entry), violation("staff")),
        (staff("main-in").last(Direction::Exit), grant("staff")),
        (staff("main-out").last(Direction::Exit), violation("staff")),
        (staff("main-out"), grant("staff")),
        // A reader in no zone ignores the state.
        (
            row("", json!("staff"), "lab", MON_10).last(Direction::Entry),
            grant("staff"),
        ),
    ];
    run(&site(), &table);
}

#[test]
fn emergency_unlock_does_not_change_decisions() {
    let p = site();
    let rows = [
        row("grant", json!("staff"), "lab", MON_10),
        row("outside", json!("staff"), "lab", SAT_10),
        row("passback", json!("guard"), "gate", MON_10).last(Direction::Entry),
        row("soft", json!("staff"), "main", MON_10).last(Direction::Entry),
        row("no match", json!(null), "lab", MON_10).who(Who::NoMatch),
    ];
    for r in rows {
        let normal = decide_row(&p, &r);
        assert_eq!(
            decide_row(&p, &r.clone().mode(SiteMode::EmergencyUnlock)),
            normal,
            "{}",
            r.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Lookups
// ---------------------------------------------------------------------------------------------

#[test]
fn lookups_and_defaults() {
    let p = site();
    let door = |s: &str| DoorId(s.to_owned());
    let reader = |s: &str| ReaderId(s.to_owned());
    let main = p.door(&door("main")).unwrap();
    assert_eq!(main.name, "main", "the name defaults to the id");
    assert_eq!(
        main.relay,
        Relay {
            device: "board-1".into(),
            coil: 0,
            pulse_ms: 3000
        }
    );
    assert_eq!(
        (
            main.contact.clone(),
            main.rex.clone(),
            main.device_timed_pulse
        ),
        (None, None, false)
    );
    assert!(p.door(&door("attic")).is_none());
    assert_eq!(
        p.door_of_reader(&reader("main-out")).map(|d| d.id.as_str()),
        Some("main")
    );
    assert_eq!(
        p.door_of_reader(&reader("gate-in")).map(|d| d.id.as_str()),
        Some("gate")
    );
    assert!(p.door_of_reader(&reader("kiosk")).is_none());
    assert_eq!(
        p.zone_of_reader(&reader("gate-in")),
        Some(("campus", Direction::Entry))
    );
    assert_eq!(
        p.zone_of_reader(&reader("main-out")),
        Some(("lobby", Direction::Exit))
    );
    assert_eq!(p.zone_of_reader(&reader("lab-1")), None);
    assert_eq!(p.relay_devices[0].unit, 1, "unit defaults to 1");
    assert!(
        !p.level("admin").unwrap().respect_holidays,
        "respect_holidays defaults to false"
    );
    assert_eq!(p.level("admin").unwrap().doors, LevelDoors::All);
    assert!(p.level("nobody").is_none());
    assert!(
        p.is_holiday(utc("2026-12-15T19:00:00Z")) && !p.is_holiday(utc("2026-12-15T18:59:59Z"))
    );
    assert_eq!(p.sha256.len(), 64);
    // The `lab` window does not say whether it keeps the holidays (it does not, by default).
    let keys: Vec<&str> = p.warnings.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, ["unlock_windows[1]"], "{:?}", p.warnings);
}

#[test]
fn partner_allowed_by_id_or_name() {
    let p = site();
    let id = |s: &str| PartnerId::parse(s).unwrap();
    assert!(p.partner_allowed(id(ACME), "anything"));
    assert!(p.partner_allowed(id(GAMMA), "Beta Corp"));
    assert!(!p.partner_allowed(id(GAMMA), "Gamma"));
    assert!(!p.partner_allowed(id(BETA), "Beta"));
    let open = site_in("UTC", r#"["*"]"#);
    assert!(open.partner_allowed(id(GAMMA), "Gamma"));
}

#[test]
fn unlock_windows_follow_their_schedule_in_the_site_zone() {
    let p = site();
    let main = DoorId("main".into());
    let lab = DoorId("lab".into());
    let vault = DoorId("vault".into());
    let table = [
        (&main, MON_10, true),
        (&main, "2026-06-01T02:59:59Z", false), // 07:59:59 local
        (&main, "2026-06-01T03:00:00Z", true),  // 08:00 local
        (&main, "2026-06-01T13:00:00Z", false), // 18:00 local
        (&main, SAT_10, false),
        (&main, HOLIDAY_10, false), // respect_holidays = true
        (&lab, HOLIDAY_10, true),   // respect_holidays defaults to false
        (&vault, MON_10, false),    // no window
    ];
    for (door, at, want) in table {
        assert_eq!(p.unlocked_by_window(door, utc(at)), want, "{door} at {at}");
    }
}

#[test]
fn verdicts_and_reasons_serialize_in_snake_case() {
    for r in DenyReason::ALL {
        assert_eq!(serde_json::to_value(r).unwrap(), json!(r.as_str()));
        assert_eq!(r.to_string(), r.as_str());
    }
    assert_eq!(
        serde_json::to_value(deny_by(OutsideSchedule, "staff")).unwrap(),
        json!({"verdict": "denied", "reason": "outside_schedule", "level": "staff"})
    );
    assert_eq!(
        serde_json::to_value(violation("staff")).unwrap(),
        json!({"verdict": "granted", "level": "staff", "passback_violation": true})
    );
    assert_eq!(
        serde_json::to_value(SiteMode::EmergencyUnlock).unwrap(),
        json!("emergency_unlock")
    );
    assert_eq!(
        serde_json::to_value(Direction::Exit).unwrap(),
        json!("exit")
    );
    assert_eq!(
        serde_json::to_value(DoorId("main".into())).unwrap(),
        json!("main")
    );
    let v = violation("staff");
    assert!(v.granted() && v.reason().is_none() && v.level() == Some("staff"));
}

#[test]
fn modbus_addresses() {
    let tcp = |h: &str, p| ModbusAddr::Tcp {
        host: h.into(),
        port: p,
    };
    let rtu = |p: &str, b| ModbusAddr::Rtu {
        path: p.into(),
        baud: b,
    };
    let ok = [
        ("tcp://127.0.0.1:5020", tcp("127.0.0.1", 5020)),
        ("tcp://relay.lan:502", tcp("relay.lan", 502)),
        ("tcp://relay.lan", tcp("relay.lan", 502)),
        ("tcp://[::1]:5020", tcp("::1", 5020)),
        ("rtu:///dev/ttyUSB0?baud=9600", rtu("/dev/ttyUSB0", 9600)),
        ("rtu:///dev/ttyS1?baud=115200", rtu("/dev/ttyS1", 115200)),
        ("rtu:///dev/ttyUSB0", rtu("/dev/ttyUSB0", 9600)),
    ];
    for (s, want) in ok {
        let got = ModbusAddr::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(got, want, "{s}");
        assert_eq!(
            ModbusAddr::parse(&got.to_string()).unwrap(),
            want,
            "round trip of {s}"
        );
    }
    let bad = [
        ("udp://1.2.3.4:502", "expected tcp://"),
        ("1.2.3.4:502", "expected tcp://"),
        ("tcp://:502", "bad host"),
        ("tcp://h:0", "bad port"),
        ("tcp://h:65536", "bad port"),
        ("tcp://h:502/x", "bad port"),
        ("tcp://a b:502", "bad host"),
        ("tcp://[::1", "bad host"),
        ("rtu://ttyUSB0?baud=9600", "device path"),
        ("rtu:///dev/ttyUSB0?baud=fast", "bad baud"),
        ("rtu:///dev/ttyUSB0?baud=0", "bad baud"),
        ("rtu:///dev/ttyUSB0?parity=N", "unknown parameter"),
    ];
    for (s, want) in bad {
        let err = ModbusAddr::parse(s).unwrap_err();
        assert!(err.contains(want), "{s}: {err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation
// ---------------------------------------------------------------------------------------------

#[test]
fn the_example_site_is_valid() {
    let p = Policy::parse(EXAMPLE).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(p.timezone, chrono_tz::Asia::Almaty);
    assert_eq!(p.partners, Partners::All);
    assert_eq!(p.holidays.len(), 2);
    assert_eq!(
        p.relay_devices[0].modbus,
        ModbusAddr::Tcp {
            host: "127.0.0.1".into(),
            port: 5020
        }
    );
    let ids: Vec<&str> = p.doors.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["main-entrance", "floor-2", "server-room"]);
    let contact = p.doors[0].contact.as_ref().unwrap();
    assert_eq!((contact.input, contact.held_open_after_s), (0, 30));
    assert_eq!(p.doors[2].relay.pulse_ms, 2000);
    assert_eq!(p.levels.len(), 2);
    assert_eq!(p.unlock_windows.len(), 1);
    assert_eq!(p.zones[0].anti_passback, super::AntiPassback::Soft);
    assert_eq!(p.sha256, hex::encode(Sha256::digest(EXAMPLE.as_bytes())));
    // The example is what `palmgate check` and every start show an operator: no warning.
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    // With `lobby-exit-1` on no door: accepted, with a warning naming it.
    let doc = EXAMPLE.replace(r#"["lobby-1", "lobby-exit-1"]"#, r#"["lobby-1"]"#);
    let p = Policy::parse(&doc).unwrap_or_else(|e| panic!("{e:#?}"));
    let w: Vec<String> = p.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(w.len(), 1, "{w:?}");
    let line = doc
        .lines()
        .position(|l| l.starts_with("exit_readers"))
        .unwrap()
        + 1;
    assert!(
        w[0].starts_with(&format!(
            "line {line}, zones[0].exit_readers[0]: reader `lobby-exit-1` is on no door"
        )),
        "{w:?}"
    );
}

#[test]
fn the_version_is_the_sha256_of_the_exact_text() {
    let mini = Policy::parse(MINI).unwrap();
    assert_eq!(mini.sha256, hex::encode(Sha256::digest(MINI.as_bytes())));
    let again = Policy::parse(MINI).unwrap();
    assert_eq!(
        mini.sha256, again.sha256,
        "the same text is the same version"
    );
    let one_more_newline = Policy::parse(&format!("{MINI}\n")).unwrap();
    assert_ne!(
        mini.sha256, one_more_newline.sha256,
        "any byte makes another version"
    );
}

/// The smallest valid site; the validation cases edit it.
const MINI: &str = r#"timezone = "Asia/Almaty"

[[relay_devices]]
id = "board-1"
modbus = "tcp://127.0.0.1:5020"

[[doors]]
id = "main"
readers = ["main-in"]
relay = { device = "board-1", coil = 0 }

[schedules]
always = ["* * * * * *"]

[[levels]]
name = "admin"
doors = ["*"]
schedule = "always"
"#;

/// The 1-based line of the first line containing `needle`.
fn line_with(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no `{needle}`"))
        + 1
}

/// MINI with `from` replaced by `to` (or `to` appended when `from` is empty).
fn edit(from: &str, to: &str) -> String {
    if from.is_empty() {
        format!("{MINI}{to}")
    } else {
        assert!(MINI.contains(from), "MINI has no `{from}`");
        MINI.replacen(from, to, 1)
    }
}

/// (case, from, to, key, line needle, message fragment)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

fn check_cases(cases: &[Case]) {
    let mut failures = Vec::new();
    for &(name, from, to, key, needle, fragment) in cases {
        let text = edit(from, to);
        let errors = match Policy::parse(&text) {
            Ok(_) => {
                failures.push(format!("{name}: parsed without errors"));
                continue;
            }
            Err(e) => e,
        };
        let line = line_with(&text, needle);
        let hit = errors
            .iter()
            .any(|e| e.key == key && e.line == Some(line) && e.message.contains(fragment));
        if !hit {
            let got: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            failures.push(format!(
                "{name}: want line {line}, {key}: …{fragment}…; got {got:#?}"
            ));
        }
        if errors.len() != 1 {
            failures.push(format!(
                "{name}: {} errors, want 1: {errors:#?}",
                errors.len()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn mini_is_valid() {
    let p = Policy::parse(MINI).unwrap();
    assert!(p.warnings.is_empty());
}

#[test]
fn syntax_errors_name_the_line() {
    let text = edit("", "oops = [1,\n\"a\" = = 2\n");
    let errors = Policy::parse(&text).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].key, "");
    assert!(
        errors[0].line.unwrap() >= line_with(&text, "oops"),
        "{errors:#?}"
    );
    assert!(errors[0].to_string().starts_with("line "), "{}", errors[0]);
}

#[test]
fn top_level_rules() {
    check_cases(&[
        (
            "unknown key",
            "timezone = \"Asia/Almaty\"",
            "timezone = \"Asia/Almaty\"\ncolour = \"red\"",
            "colour",
            "colour",
            "unknown key",
        ),
        (
            "timezone unknown",
            "Asia/Almaty",
            "Asia/Atlantis",
            "timezone",
            "timezone",
            "unknown time zone `Asia/Atlantis`",
        ),
        (
            "timezone type",
            "\"Asia/Almaty\"",
            "5",
            "timezone",
            "timezone",
            "invalid type",
        ),
        (
            "holiday date",
            "timezone = \"Asia/Almaty\"",
            "timezone = \"Asia/Almaty\"\nholidays = [\"2026-12-16\", \"16.12.2026\"]",
            "holidays[1]",
            "holidays",
            "`16.12.2026` is not a YYYY-MM-DD date",
        ),
        (
            "holiday type",
            "timezone = \"Asia/Almaty\"",
            "timezone = \"Asia/Almaty\"\nholidays = [20261216]",
            "holidays[0]",
            "holidays",
            "must be a date",
        ),
        (
            "partners star",
            "timezone = \"Asia/Almaty\"",
            "timezone = \"Asia/Almaty\"\npartners = [\"acme\", \"*\"]",
            "partners[1]",
            "partners",
            "must be the only entry",
        ),
        (
            "partners empty",
            "timezone = \"Asia/Almaty\"",
            "timezone = \"Asia/Almaty\"\npartners = [\" \"]",
            "partners[0]",
            "partners",
            "must not be empty",
        ),
        (
            "partners type",
            "timezone = \"Asia/Almaty\"",
            "timezone = \"Asia/Almaty\"\npartners = \"*\"",
            "partners",
            "partners",
            "invalid type",
        ),
        (
            "not an array of tables",
            "timezone = \"Asia/Almaty\"",
            "timezone = \"Asia/Almaty\"\nzones = 5",
            "zones",
            "zones = 5",
            "must be an array of tables",
        ),
        (
            "no schedules at all",
            "[schedules]\nalways = [\"* * * * * *\"]\n",
            "",
            "levels[0].schedule",
            "schedule = \"always\"",
            "unknown schedule `always`",
        ),
    ]);
    // A missing time zone is reported at the top of the document.
    let errors = Policy::parse(&edit("timezone = \"Asia/Almaty\"", "")).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0].key.as_str(), errors[0].line),
        ("timezone", Some(1))
    );
    assert!(errors[0].message.starts_with("missing"), "{errors:?}");
}

#[test]
fn relay_device_rules() {
    const SECOND: &str =
        "[[relay_devices]]\nid = \"board-1\" # dup\nmodbus = \"rtu:///dev/ttyUSB0?baud=9600\"\n";
    check_cases(&[
        (
            "duplicate id",
            "",
            SECOND,
            "relay_devices[1].id",
            "# dup",
            "duplicate `board-1` (first in relay_devices[0])",
        ),
        (
            "empty id",
            "",
            "\n[[relay_devices]]\nid = \"\"\nmodbus = \"tcp://h:1\"\n",
            "relay_devices[1].id",
            "id = \"\"",
            "must not be empty",
        ),
        (
            "modbus scheme",
            "tcp://127.0.0.1:5020",
            "udp://127.0.0.1:5020",
            "relay_devices[0].modbus",
            "udp://",
            "expected tcp://host:port or rtu://",
        ),
        (
            "modbus port",
            "tcp://127.0.0.1:5020",
            "tcp://127.0.0.1:70000",
            "relay_devices[0].modbus",
            "70000",
            "bad port",
        ),
        (
            "modbus rtu baud",
            "tcp://127.0.0.1:5020",
            "rtu:///dev/ttyUSB0?baud=fast",
            "relay_devices[0].modbus",
            "rtu://",
            "bad baud",
        ),
        (
            "unit too big",
            "modbus = \"tcp://127.0.0.1:5020\"",
            "modbus = \"tcp://127.0.0.1:5020\"\nunit = 248",
            "relay_devices[0].unit",
            "unit",
            "248 is out of range 0..=247",
        ),
        (
            "unit negative",
            "modbus = \"tcp://127.0.0.1:5020\"",
            "modbus = \"tcp://127.0.0.1:5020\"\nunit = -1",
            "relay_devices[0].unit",
            "unit",
            "out of range",
        ),
        (
            "unknown field",
            "modbus = \"tcp://127.0.0.1:5020\"",
            "modbus = \"tcp://127.0.0.1:5020\"\nbaud = 9600",
            "relay_devices[0].baud",
            "baud",
            "unknown field `baud`",
        ),
        (
            "missing modbus",
            "modbus = \"tcp://127.0.0.1:5020\"\n",
            "",
            "relay_devices[0]",
            "[[relay_devices]]",
            "missing field `modbus`",
        ),
    ]);
    for unit in [0, 247] {
        let text = edit(
            "modbus = \"tcp://127.0.0.1:5020\"",
            &format!("modbus = \"tcp://127.0.0.1:5020\"\nunit = {unit}"),
        );
        assert_eq!(Policy::parse(&text).unwrap().relay_devices[0].unit, unit);
    }
}

const RELAY: &str = "relay = { device = \"board-1\", coil = 0 }";

/// A reader id no reader can use in its MQTT topics refuses a new activation, naming where it
/// is; a document already logged with one still reads (it was valid when activated).
#[test]
fn reader_ids_no_reader_can_use_refuse_a_new_activation() {
    for (from, to, key, needle) in [
        (
            "readers = [\"main-in\"]",
            "readers = [\"main in\"]",
            "doors[0].readers[0]",
            "main in",
        ),
        (
            "[schedules]",
            "[[zones]]\nname = \"z\"\nentry_readers = [\"gate/in\"]\nanti_passback = \"soft\"\n\n[schedules]",
            "zones[0].entry_readers[0]",
            "gate/in",
        ),
    ] {
        let text = edit(from, to);
        let errors = Policy::parse_new(&text).expect_err(to);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].key, key);
        assert_eq!(errors[0].line, Some(line_with(&text, needle)));
        assert!(
            errors[0].message.contains(&format!(
                "reader id `{needle}` must be 1–128 letters, digits or `-_.:`"
            )),
            "{}",
            errors[0]
        );
        let logged = Policy::parse(&text).expect("a logged document still reads");
        assert_eq!(logged.refused.len(), 1);
    }
    assert!(Policy::parse_new(MINI).is_ok());
}

#[test]
fn door_rules() {
    check_cases(&[
        (
            "duplicate id",
            "[schedules]",
            "[[doors]]\nid = \"main\" # dup\nrelay = { device = \"board-1\", coil = 1 }\n\n[schedules]",
            "doors[1].id",
            "# dup",
            "duplicate `main` (first in doors[0])",
        ),
        (
            "reader on two doors",
            "[schedules]",
            "[[doors]]\nid = \"side\"\nreaders = [\"x\", \"main-in\"] # taken\nrelay = { device = \"board-1\", coil = 1 }\n\n[schedules]",
            "doors[1].readers[1]",
            "# taken",
            "reader `main-in` is already on door `main`",
        ),
        (
            "reader twice on a door",
            "readers = [\"main-in\"]",
            "readers = [\"main-in\", \"main-in\"]",
            "doors[0].readers[1]",
            "readers",
            "already on door `main`",
        ),
        (
            "empty reader",
            "readers = [\"main-in\"]",
            "readers = [\"\"]",
            "doors[0].readers[0]",
            "readers",
            "must not be empty",
        ),
        (
            "star id",
            "id = \"main\"",
            "id = \"*\"",
            "doors[0].id",
            "id = \"*\"",
            "reserved",
        ),
        (
            "relay device",
            RELAY,
            "relay = { device = \"board-9\", coil = 0 }",
            "doors[0].relay.device",
            "board-9",
            "unknown relay device `board-9`",
        ),
        (
            "coil range",
            RELAY,
            "relay = { device = \"board-1\", coil = 65536 }",
            "doors[0].relay.coil",
            "65536",
            "out of range 0..=65535",
        ),
        (
            "coil negative",
            RELAY,
            "relay = { device = \"board-1\", coil = -1 }",
            "doors[0].relay.coil",
            "coil = -1",
            "out of range",
        ),
        (
            "pulse too short",
            RELAY,
            "relay = { device = \"board-1\", coil = 0, pulse_ms = 99 }",
            "doors[0].relay.pulse_ms",
            "pulse_ms",
            "99 is out of range 100..=60000",
        ),
        (
            "pulse too long",
            RELAY,
            "relay = { device = \"board-1\", coil = 0, pulse_ms = 60001 }",
            "doors[0].relay.pulse_ms",
            "pulse_ms",
            "out of range",
        ),
        (
            "coil shared",
            "[schedules]",
            "[[doors]]\nid = \"side\"\nrelay = { device = \"board-1\", coil = 0 } # coil\n\n[schedules]",
            "doors[1].relay.coil",
            "# coil",
            "0 of `board-1` is already used by door `main`",
        ),
        (
            "contact device",
            RELAY,
            "relay = { device = \"board-1\", coil = 0 }\ncontact = { device = \"board-9\", input = 0 }",
            "doors[0].contact.device",
            "contact",
            "unknown relay device",
        ),
        (
            "contact input",
            RELAY,
            "relay = { device = \"board-1\", coil = 0 }\ncontact = { device = \"board-1\", input = 70000 }",
            "doors[0].contact.input",
            "contact",
            "out of range",
        ),
        (
            "held open",
            RELAY,
            "relay = { device = \"board-1\", coil = 0 }\ncontact = { device = \"board-1\", input = 0, held_open_after_s = 0 }",
            "doors[0].contact.held_open_after_s",
            "contact",
            "0 is out of range 1..=86400",
        ),
        (
            "rex device",
            RELAY,
            "relay = { device = \"board-1\", coil = 0 }\nrex = { device = \"board-9\", input = 1 }",
            "doors[0].rex.device",
            "rex",
            "unknown relay device",
        ),
        (
            "rex held open",
            RELAY,
            "relay = { device = \"board-1\", coil = 0 }\nrex = { device = \"board-1\", input = 1, held_open_after_s = 5 }",
            "doors[0].rex.held_open_after_s",
            "rex",
            "only a door contact",
        ),
        (
            "input shared",
            RELAY,
            "relay = { device = \"board-1\", coil = 0 }\ncontact = { device = \"board-1\", input = 1 }\nrex = { device = \"board-1\", input = 1 }",
            "doors[0].rex.input",
            "rex",
            "1 of `board-1` is already used by door `main`",
        ),
        (
            "timed pulse without a register map",
            RELAY,
            "relay = { device = \"board-1\", coil = 0 }\ndevice_timed_pulse = true",
            "doors[0].device_timed_pulse",
            "device_timed_pulse",
            "has no `timed_pulse` register map",
        ),
        (
            "timed pulse unit",
            "modbus = \"tcp://127.0.0.1:5020\"",
            "modbus = \"tcp://127.0.0.1:5020\"\ntimed_pulse = { register_base = 256, unit_ms = 0 }",
            "relay_devices[0].timed_pulse.unit_ms",
            "timed_pulse",
            "0 is out of range 1..=60000",
        ),
        (
            "timed pulse type",
            RELAY,
            "relay = { device = \"board-1\", coil = 0 }\ndevice_timed_pulse = \"yes\"",
            "doors[0].device_timed_pulse",
            "device_timed_pulse",
            "invalid type",
        ),
        (
            "unknown field",
            RELAY,
            "relay = { device = \"board-1\", coil = 0 }\ncolour = \"red\"",
            "doors[0].colour",
            "colour",
            "unknown field `colour`",
        ),
        (
            "unknown relay field",
            RELAY,
            "relay = { device = \"board-1\", coil = 0, invert = true }",
            "doors[0].relay.invert",
            "invert",
            "unknown field `invert`",
        ),
        (
            "missing relay",
            "readers = [\"main-in\"]\nrelay = { device = \"board-1\", coil = 0 }",
            "readers = [\"main-in\"]",
            "doors[0]",
            "[[doors]]",
            "missing field `relay`",
        ),
    ]);
    let text = edit(
        RELAY,
        "relay = { device = \"board-1\", coil = 7, pulse_ms = 100 }\ncontact = { device = \"board-1\", input = 2 }\nrex = { device = \"board-1\", input = 3 }\ndevice_timed_pulse = true\nname = \"Main\"",
    )
    .replacen(
        "modbus = \"tcp://127.0.0.1:5020\"",
        "modbus = \"tcp://127.0.0.1:5020\"\ntimed_pulse = { register_base = 256, unit_ms = 100 }",
        1,
    );
    let p = Policy::parse(&text).unwrap();
    assert_eq!(
        p.relay_devices[0].timed_pulse,
        Some(crate::core::policy::TimedPulse {
            register_base: 256,
            unit_ms: 100
        })
    );
    // 2500 ms in units of 100 ms on coil 7: 25 written to register 263.
    assert_eq!(
        p.relay_devices[0].timed_pulse.unwrap().write_for(7, 2_450),
        Some((263, 25))
    );
    let d = &p.doors[0];
    assert_eq!(
        d.relay,
        Relay {
            device: "board-1".into(),
            coil: 7,
            pulse_ms: 100
        }
    );
    assert_eq!(
        d.contact,
        Some(Contact {
            device: "board-1".into(),
            input: 2,
            held_open_after_s: 30
        })
    );
    assert_eq!(
        d.rex,
        Some(Rex {
            device: "board-1".into(),
            input: 3
        })
    );
    assert!(d.device_timed_pulse);
    assert_eq!(d.name, "Main");
}

/// Relay devices on one serial port share its RS-485 line: they must agree on the baud and
/// each have its own unit, or a new activation is refused at the device that disagrees; a site
/// logged before the rule still reads.
#[test]
fn relay_devices_on_one_serial_port_share_its_baud_and_not_a_unit() {
    let site = |second: &str| {
        SITE.replace("{tz}", "Asia/Almaty")
            .replace("{partners}", &format!("[\"{ACME}\"]"))
            .replacen(
                "modbus = \"tcp://127.0.0.1:5020\"",
                &format!(
                    "modbus = \"rtu:///dev/ttyUSB0?baud=9600\"\n\n[[relay_devices]]\n\
                     id = \"board-2\"\n{second}\n\n[[relay_devices]]\nid = \"board-3\"\n\
                     modbus = \"rtu:///dev/ttyUSB1\""
                ),
                1,
            )
    };
    // Another unit at the same baud: one line, two boards.
    let p = Policy::parse_new(&site("modbus = \"rtu:///dev/ttyUSB0\"\nunit = 2")).unwrap();
    assert_eq!(p.relay_devices.len(), 3);
    for (second, key, needle, message) in [
        (
            "modbus = \"rtu:///dev/ttyUSB0?baud=19200\"\nunit = 2",
            "relay_devices[1].modbus",
            "baud=19200",
            "serial port `/dev/ttyUSB0` runs at 9600 baud for relay device `board-1`",
        ),
        (
            "modbus = \"rtu:///dev/ttyUSB0\"\nunit = 1",
            "relay_devices[1].unit",
            "unit = 1",
            "unit 1 on serial port `/dev/ttyUSB0` is already relay device `board-1`'s",
        ),
    ] {
        let text = site(second);
        let errors = Policy::parse_new(&text).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:#?}");
        let e = &errors[0];
        assert_eq!(e.key, key, "{e}");
        assert_eq!(e.line, Some(line_with(&text, needle)), "{e}");
        assert!(e.message.contains(message), "{e}");
        assert_eq!(Policy::parse(&text).unwrap().relay_devices.len(), 3);
    }
}

/// A timed-pulse register past 65535 (`register_base + coil`) is refused at the door's coil;
/// before, the write wrapped around to register `base + coil - 65536`, another coil's timer.
#[test]
fn a_timed_pulse_register_past_the_last_is_refused() {
    let site = |base: u32, coil: u32, timed: bool| {
        edit(
            RELAY,
            &format!(
                "relay = {{ device = \"board-1\", coil = {coil} }}\ndevice_timed_pulse = {timed}"
            ),
        )
        .replacen(
            "modbus = \"tcp://127.0.0.1:5020\"",
            &format!(
                "modbus = \"tcp://127.0.0.1:5020\"\ntimed_pulse = {{ register_base = {base}, unit_ms = 100 }}"
            ),
            1,
        )
    };
    // The last register is fine.
    let p = Policy::parse_new(&site(65_000, 535, true)).unwrap();
    let timer = p.relay_devices[0].timed_pulse.unwrap();
    assert_eq!(timer.write_for(535, 300), Some((65_535, 3)));
    // One past it: a new activation is refused, naming the door's coil and the sum.
    let text = site(65_000, 536, true);
    let errors = Policy::parse_new(&text).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    assert_eq!(e.key, "doors[0].relay.coil", "{e}");
    assert_eq!(e.line, Some(line_with(&text, "coil = 536")), "{e}");
    assert!(e.message.contains("65000 + 536 = 65536"), "{e}");
    // A site logged before the rule still reads; the board's timer is not used for that coil
    // (the gateway times the pulse) rather than wrapping to register 0, another coil's timer.
    let logged = Policy::parse(&text).unwrap();
    assert_eq!(
        logged.relay_devices[0]
            .timed_pulse
            .unwrap()
            .write_for(536, 300),
        None
    );
    // A door that does not use the board's timer is not written there.
    Policy::parse_new(&site(65_000, 536, false)).unwrap();
}

#[test]
fn schedule_rules() {
    const ALWAYS: &str = "always = [\"* * * * * *\"]";
    check_cases(&[
        (
            "bad expression",
            ALWAYS,
            "always = [\"* * * * * *\"]\nbroken = [\"* * 25 * * *\"]",
            "schedules.broken[0]",
            "broken",
            "`* * 25 * * *`",
        ),
        (
            "seconds",
            ALWAYS,
            "always = [\"* * * * * *\"]\nsharp = [\"* * * * * *\", \"0 0 8 * * *\"]",
            "schedules.sharp[1]",
            "sharp",
            "the seconds field must be `*`",
        ),
        (
            "five fields",
            ALWAYS,
            "always = [\"* * * * * *\"]\nunix = [\"0 8 * * 1-5\"]",
            "schedules.unix[0]",
            "unix",
            "a window needs 6 or 7",
        ),
        (
            "shorthand",
            ALWAYS,
            "always = [\"* * * * * *\"]\ndaily = [\"@daily\"]",
            "schedules.daily[0]",
            "daily",
            "a window needs 6 or 7",
        ),
        (
            "empty",
            ALWAYS,
            "always = [\"* * * * * *\"]\nnever = []",
            "schedules.never",
            "never",
            "at least one cron window",
        ),
        (
            "not a list",
            ALWAYS,
            "always = [\"* * * * * *\"]\nsolo = \"* * * * * *\"",
            "schedules.solo",
            "solo",
            "invalid type",
        ),
    ]);
    // `schedules` must be a table; the level that names one of its schedules then fails too.
    let text = MINI
        .replace("[schedules]\nalways = [\"* * * * * *\"]\n", "")
        .replace(
            "timezone = \"Asia/Almaty\"",
            "timezone = \"Asia/Almaty\"\nschedules = 5",
        );
    let got: Vec<String> = Policy::parse(&text)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].starts_with("line 2, schedules: must be a table"),
        "{got:?}"
    );
    assert!(
        got[1].ends_with("levels[0].schedule: unknown schedule `always`"),
        "{got:?}"
    );
}

#[test]
fn level_rules() {
    check_cases(&[
        (
            "duplicate name",
            "",
            "\n[[levels]]\nname = \"admin\" # dup\ndoors = [\"main\"]\nschedule = \"always\"\n",
            "levels[1].name",
            "# dup",
            "duplicate `admin` (first in levels[0])",
        ),
        (
            "empty name",
            "name = \"admin\"",
            "name = \"\"",
            "levels[0].name",
            "name = \"\"",
            "must not be empty",
        ),
        (
            "unknown door",
            "doors = [\"*\"]",
            "doors = [\"main\", \"attic\"]",
            "levels[0].doors[1]",
            "attic",
            "unknown door `attic`",
        ),
        (
            "star mixed",
            "doors = [\"*\"]",
            "doors = [\"main\", \"*\"]",
            "levels[0].doors[1]",
            "doors = [",
            "`*` (every door) must be the only entry",
        ),
        (
            "unknown schedule",
            "schedule = \"always\"",
            "schedule = \"nights\"",
            "levels[0].schedule",
            "nights",
            "unknown schedule `nights`",
        ),
        (
            "missing schedule",
            "schedule = \"always\"\n",
            "",
            "levels[0]",
            "[[levels]]",
            "missing field `schedule`",
        ),
        (
            "holidays type",
            "schedule = \"always\"",
            "schedule = \"always\"\nrespect_holidays = \"yes\"",
            "levels[0].respect_holidays",
            "respect_holidays",
            "invalid type",
        ),
        (
            "unknown field",
            "schedule = \"always\"",
            "schedule = \"always\"\npriority = 1",
            "levels[0].priority",
            "priority",
            "unknown field `priority`",
        ),
    ]);
    let p = Policy::parse(&edit("doors = [\"*\"]", "doors = []")).unwrap();
    assert_eq!(
        p.levels[0].doors,
        LevelDoors::Only(vec![]),
        "an empty level is allowed (it opens nothing)"
    );
}

#[test]
fn unlock_window_rules() {
    check_cases(&[
        (
            "unknown door",
            "",
            "\n[[unlock_windows]]\ndoor = \"attic\"\nschedule = \"always\"\n",
            "unlock_windows[0].door",
            "attic",
            "unknown door `attic`",
        ),
        (
            "unknown schedule",
            "",
            "\n[[unlock_windows]]\ndoor = \"main\"\nschedule = \"lunch\"\n",
            "unlock_windows[0].schedule",
            "lunch",
            "unknown schedule `lunch`",
        ),
        (
            "unknown field",
            "",
            "\n[[unlock_windows]]\ndoor = \"main\"\nschedule = \"always\"\nuntil = 5\n",
            "unlock_windows[0].until",
            "until",
            "unknown field `until`",
        ),
    ]);
}

/// A zone that can never see an entry, or a hard one that can never see an exit (everyone
/// would be denied `anti_passback` from their second entry on), refuses a new activation with
/// its line; a logged document still reads.
#[test]
fn zones_without_the_readers_they_need_refuse_a_new_activation() {
    for (zone, key, needle) in [
        (
            "[[zones]]\nname = \"z\"\nentry_readers = [\"main-in\"]\nanti_passback = \"hard\"\n",
            "zones[0].exit_readers",
            "a hard anti-passback zone needs at least one exit reader",
        ),
        (
            "[[zones]]\nname = \"z\"\nentry_readers = [\"main-in\"]\nexit_readers = []\nanti_passback = \"hard\"\n",
            "zones[0].exit_readers",
            "a hard anti-passback zone needs at least one exit reader",
        ),
        (
            "[[zones]]\nname = \"z\"\nanti_passback = \"soft\"\n",
            "zones[0].entry_readers",
            "a zone needs at least one entry reader",
        ),
    ] {
        let text = format!("{MINI}\n{zone}");
        let errors = Policy::parse_new(&text).expect_err(zone);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].key, key);
        assert!(
            errors[0].line >= Some(line_with(&text, "[[zones]]")),
            "{}",
            errors[0]
        );
        assert!(errors[0].message.contains(needle), "{}", errors[0]);
        assert_eq!(
            Policy::parse(&text)
                .expect("a logged document still reads")
                .refused
                .len(),
            1
        );
    }
    // A soft zone may have no exit reader: it only marks repeated entries.
    let soft = format!(
        "{MINI}\n[[zones]]\nname = \"z\"\nentry_readers = [\"main-in\"]\nanti_passback = \"soft\"\n"
    );
    Policy::parse_new(&soft).expect("a soft zone without exits");
}

/// A site with holidays and an unlock window that does not say whether it keeps them: the
/// door would rest unlocked on a holiday (unset reads as `false`, as it always did), so it is
/// accepted with a warning; saying either way silences it.
#[test]
fn an_unlock_window_silent_on_the_sites_holidays_is_warned_about() {
    let window = "\n[[unlock_windows]]\ndoor = \"main\"\nschedule = \"always\"\n";
    let with_holidays = MINI.replace(
        "timezone = \"Asia/Almaty\"",
        "timezone = \"Asia/Almaty\"\nholidays = [\"2026-12-16\"]",
    );
    let p = Policy::parse_new(&format!("{with_holidays}{window}")).expect("accepted");
    assert_eq!(p.warnings.len(), 1, "{:#?}", p.warnings);
    assert_eq!(p.warnings[0].key, "unlock_windows[0]");
    assert!(
        p.warnings[0].message.contains("respect_holidays = true"),
        "{}",
        p.warnings[0]
    );
    assert!(!p.unlock_windows[0].respect_holidays);
    for said in ["true", "false"] {
        let text = format!("{with_holidays}{window}respect_holidays = {said}\n");
        let p = Policy::parse_new(&text).expect("accepted");
        assert!(p.warnings.is_empty(), "{said}: {:#?}", p.warnings);
        assert_eq!(p.unlock_windows[0].respect_holidays, said == "true");
    }
    // No holidays, nothing to say.
    let p = Policy::parse_new(&format!("{MINI}{window}")).expect("accepted");
    assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
}

/// A fixed non-zero offset (`EST`, `Etc/GMT+5`) is accepted with a warning: such a site never
/// changes to summer time, and in `Etc/GMT+N` the sign is inverted. A place, or UTC itself, is
/// not warned about.
#[test]
fn a_fixed_offset_time_zone_is_warned_about() {
    for (name, says) in [
        ("EST", "UTC−05:00"),
        ("HST", "UTC−10:00"),
        ("Etc/GMT+5", "UTC−05:00"),
        ("Etc/GMT-14", "UTC+14:00"),
    ] {
        let text = MINI.replace("\"Asia/Almaty\"", &format!("{name:?}"));
        let p = Policy::parse_new(&text).unwrap_or_else(|e| panic!("{name}: {e:#?}"));
        assert_eq!(p.warnings.len(), 1, "{name}: {:#?}", p.warnings);
        let w = &p.warnings[0];
        assert_eq!(w.key, "timezone", "{name}");
        assert!(w.message.contains(says), "{name}: {w}");
        assert_eq!(
            w.message.contains("inverted"),
            name.starts_with("Etc/"),
            "{name}: {w}"
        );
    }
    for name in [
        "Asia/Almaty",
        "America/New_York",
        "UTC",
        "Etc/UTC",
        "Etc/GMT",
        "Etc/GMT+0",
    ] {
        let text = MINI.replace("\"Asia/Almaty\"", &format!("{name:?}"));
        let p = Policy::parse_new(&text).unwrap_or_else(|e| panic!("{name}: {e:#?}"));
        assert!(p.warnings.is_empty(), "{name}: {:#?}", p.warnings);
    }
}

/// Warnings come in the document's order, whatever order the checks ran in: unlock windows
/// are checked before zones, and here the zone comes first in the document.
#[test]
fn warnings_come_in_the_documents_order() {
    let text = format!(
        "{}\n[[zones]]\nname = \"z\"\nentry_readers = [\"main-in\", \"ghost\"]\n\
         anti_passback = \"soft\"\n\n[[unlock_windows]]\ndoor = \"main\"\nschedule = \"always\"\n",
        MINI.replace(
            "timezone = \"Asia/Almaty\"",
            "timezone = \"EST\"\nholidays = [\"2026-12-16\"]",
        )
    );
    let p = Policy::parse_new(&text).expect("accepted");
    let keys: Vec<&str> = p.warnings.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(
        keys,
        ["timezone", "zones[0].entry_readers[1]", "unlock_windows[0]"],
        "{:#?}",
        p.warnings
    );
    let lines: Vec<_> = p.warnings.iter().map(|w| w.line).collect();
    assert!(lines.windows(2).all(|w| w[0] < w[1]), "{lines:?}");
}

/// `lock_on_stop` is read per unlock window (default false), and asked of the windows open now.
#[test]
fn lock_on_stop_is_read_per_window() {
    let now = "2026-11-28T06:00:00Z".parse().expect("instant");
    let window = "\n[[unlock_windows]]\ndoor = \"main\"\nschedule = \"always\"\n";
    let p = Policy::parse_new(&format!("{MINI}{window}")).expect("accepted");
    assert!(!p.unlock_windows[0].lock_on_stop);
    assert!(!p.locks_on_stop(&DoorId("main".into()), now));
    let p = Policy::parse_new(&format!("{MINI}{window}lock_on_stop = true\n")).expect("accepted");
    assert!(p.unlock_windows[0].lock_on_stop);
    assert!(p.locks_on_stop(&DoorId("main".into()), now));
    let errors = Policy::parse_new(&format!("{MINI}{window}lock_on_stop = \"yes\"\n")).unwrap_err();
    assert_eq!(
        errors[0].key, "unlock_windows[0].lock_on_stop",
        "{errors:#?}"
    );
}

/// A schedule whose expression is refused is not also said never to open.
#[test]
fn a_refused_expression_is_not_also_a_schedule_that_never_opens() {
    let text = MINI.replace(
        "always = [\"* * * * * *\"]",
        "always = [\"* * 22-6 * * Mon-Fri\"]",
    );
    let now = "2026-11-28T00:00:00Z".parse().expect("instant");
    let errors = Policy::parse_new_at(&text, now).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].key, "schedules.always[0]");
}

#[test]
fn zone_rules() {
    const ZONE: &str =
        "\n[[zones]]\nname = \"z\"\nentry_readers = [\"main-in\"]\nanti_passback = \"hard\"\n";
    check_cases(&[
        (
            "anti_passback value",
            "",
            "\n[[zones]]\nname = \"z\"\nanti_passback = \"medium\"\n",
            "zones[0].anti_passback",
            "medium",
            "unknown variant `medium`, expected `hard` or `soft`",
        ),
        (
            "anti_passback missing",
            "",
            "\n[[zones]]\nname = \"z\"\n",
            "zones[0]",
            "[[zones]]",
            "missing field `anti_passback`",
        ),
        (
            "reader twice",
            "",
            "\n[[zones]]\nname = \"z\"\nentry_readers = [\"main-in\"]\nexit_readers = [\"main-in\"] # again\nanti_passback = \"soft\"\n",
            "zones[0].exit_readers[0]",
            "# again",
            "reader `main-in` is already in zones[0].entry_readers[0]",
        ),
        (
            "reader in two zones",
            "",
            "\n[[zones]]\nname = \"z\"\nentry_readers = [\"main-in\"]\nanti_passback = \"soft\"\n\n[[zones]]\nname = \"y\"\nexit_readers = [\"main-in\"] # again\nanti_passback = \"hard\"\n",
            "zones[1].exit_readers[0]",
            "# again",
            "already in zones[0].entry_readers[0]",
        ),
        (
            "duplicate name",
            "",
            "\n[[zones]]\nname = \"z\"\nanti_passback = \"soft\"\n\n[[zones]]\nname = \"z\" # dup\nanti_passback = \"soft\"\n",
            "zones[1].name",
            "# dup",
            "duplicate `z` (first in zones[0])",
        ),
        (
            "unknown field",
            "",
            "\n[[zones]]\nname = \"z\"\nanti_passback = \"soft\"\ncapacity = 10\n",
            "zones[0].capacity",
            "capacity",
            "unknown field `capacity`",
        ),
    ]);
    let p = Policy::parse(&edit("", ZONE)).unwrap();
    assert!(p.warnings.is_empty());
    // A reader on no door: accepted, with a warning naming the key and the line.
    let text = edit(
        "",
        "\n[[zones]]\nname = \"z\"\nexit_readers = [\"ghost-1\"]\nanti_passback = \"hard\"\n",
    );
    let p = Policy::parse(&text).unwrap();
    assert_eq!(p.warnings.len(), 1);
    assert_eq!(p.warnings[0].key, "zones[0].exit_readers[0]");
    assert_eq!(p.warnings[0].line, Some(line_with(&text, "ghost-1")));
    assert_eq!(
        p.zone_of_reader(&ReaderId("ghost-1".into())),
        Some(("z", Direction::Exit))
    );
}

#[test]
fn all_errors_are_reported_at_once_in_line_order() {
    let text = r#"timezone = "Mars/Base"
partners = ["*", "acme"]
holidays = ["2026-02-30"]
colour = "red"

[[relay_devices]]
id = "board-1"
modbus = "udp://x"
unit = 300

[[doors]]
id = "main"
readers = ["r1"]
relay = { device = "board-1", coil = 0, pulse_ms = 5 }
sound = "beep"

[[doors]]
id = "side"
readers = ["r1"]
relay = { device = "board-2", coil = 70000 }

[schedules]
business = ["0 * 8-17 * * Mon-Fri", "* * * *"]

[[levels]]
name = "staff"
doors = ["main", "attic"]
schedule = "nights"

[[levels]]
name = "staff"
doors = ["*"]
schedule = "business"

[[unlock_windows]]
door = "cellar"
schedule = "lunch"

[[zones]]
name = "building"
entry_readers = ["r1"]
exit_readers = ["r1"]
anti_passback = "medium"
"#;
    let errors = Policy::parse(text).unwrap_err();
    let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let want = [
        "line 1, timezone: unknown time zone `Mars/Base`",
        "line 2, partners[0]: `*` (every partner) must be the only entry",
        "line 3, holidays[0]: `2026-02-30` is not a YYYY-MM-DD date",
        "line 4, colour: unknown key",
        "line 8, relay_devices[0].modbus: `udp://x`",
        "line 9, relay_devices[0].unit: 300 is out of range 0..=247",
        // doors[0] has a shape error (`sound`): reported once, its id still counts as known.
        "line 15, doors[0].sound: unknown field `sound`",
        "line 19, doors[1].readers[0]: reader `r1` is already on door `main`",
        "line 20, doors[1].relay.device: unknown relay device `board-2`",
        "line 20, doors[1].relay.coil: 70000 is out of range 0..=65535",
        "line 23, schedules.business[0]: `0 * 8-17 * * Mon-Fri`: the seconds field must be `*`",
        "line 23, schedules.business[1]: `* * * *` has 4 field(s)",
        "line 27, levels[0].doors[1]: unknown door `attic`",
        "line 28, levels[0].schedule: unknown schedule `nights`",
        "line 31, levels[1].name: duplicate `staff` (first in levels[0])",
        "line 36, unlock_windows[0].door: unknown door `cellar`",
        "line 37, unlock_windows[0].schedule: unknown schedule `lunch`",
        "line 43, zones[0].anti_passback: unknown variant `medium`",
    ];
    let missing: Vec<&str> = want
        .iter()
        .copied()
        .filter(|w| !got.iter().any(|g| g.starts_with(w)))
        .collect();
    assert!(missing.is_empty(), "missing {missing:#?}\ngot {got:#?}");
    assert_eq!(got.len(), want.len(), "{got:#?}");
    let lines: Vec<usize> = errors.iter().map(|e| e.line.unwrap()).collect();
    assert!(lines.is_sorted(), "{lines:?}");
}

#[test]
fn error_display() {
    let e = PolicyError {
        key: "levels[1].schedule".into(),
        line: Some(12),
        message: "unknown schedule `nights`".into(),
    };
    assert_eq!(
        e.to_string(),
        "line 12, levels[1].schedule: unknown schedule `nights`"
    );
    let e = PolicyError {
        key: "timezone".into(),
        line: None,
        message: "missing".into(),
    };
    assert_eq!(e.to_string(), "timezone: missing");
    let e = PolicyError {
        key: String::new(),
        line: Some(3),
        message: "invalid array".into(),
    };
    assert_eq!(e.to_string(), "line 3: invalid array");
}

/// A day-of-week field read as cron reads it: whitespace after a list's commas does not make
/// more fields, so a numeric day of week there is still warned about, and a minutes list
/// written with spaces is accepted (cron takes it) instead of "has 9 field(s)".
#[test]
fn lists_written_with_spaces_are_read_as_cron_reads_them() {
    let text = edit(
        "always = [\"* * * * * *\"]",
        "always = [\"* * 8-11, 13-17 * * 1-5\", \"* 0, 15, 30, 45 8-17 * * Mon-Fri\"]",
    );
    let p = Policy::parse(&text).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    assert_eq!(p.warnings[0].key, "schedules.always[0]");
    assert!(p.warnings[0].message.contains("`1-5`"), "{}", p.warnings[0]);
    let hours = p.schedules.get("always").unwrap();
    let at = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&Utc)
            .with_timezone(&p.timezone)
    };
    // 2026-12-07 is a Monday: 12:30 Almaty is outside 8-11 and 13-17 but on the quarter hour
    // list's 12:30 minute of the second window.
    assert!(hours.includes(&at("2026-12-07T07:30:00Z")));
    assert!(!hours.includes(&at("2026-12-07T07:31:00Z")));
    assert!(
        hours.includes(&at("2026-12-07T04:10:00Z")),
        "09:10, first window"
    );
}

/// A window no date matches, or one restricting both the day of month and the day of week, is
/// activated with a warning naming it; a schedule that a level or an unlock window uses and
/// that never opens again after the activation is refused (it would deny the level, or keep
/// the door locked, for good). A document already in the log still reads.
#[test]
fn schedules_that_never_open_are_warned_about_or_refused() {
    let text = edit(
        "always = [\"* * * * * *\"]",
        "always = [\"* * * * * *\", \"* * 8-17 30 Feb *\", \"* * 8-17 1 * Mon\"]",
    );
    let p = Policy::parse(&text).unwrap();
    let w: Vec<String> = p.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].contains("schedules.always[1]") && w[0].contains("never opens"),
        "{w:?}"
    );
    assert!(
        w[1].contains("schedules.always[2]") && w[1].contains("both"),
        "{w:?}"
    );

    let now = DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let past = edit(
        "always = [\"* * * * * *\"]",
        "always = [\"* * 8-17 * * Mon-Fri 2025\", \"* * 8-17 30 Feb *\"]",
    );
    let errors = Policy::parse_new_at(&past, now).expect_err("refused");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].key, "schedules.always");
    assert!(
        errors[0]
            .message
            .contains("opens after 2026-11-27 15:00:00")
            && errors[0].message.contains("level `admin`"),
        "{}",
        errors[0]
    );
    assert!(
        Policy::parse(&past).is_ok(),
        "a logged document still reads"
    );
    let before = DateTime::parse_from_rfc3339("2025-06-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    assert!(Policy::parse_new_at(&past, before).is_ok());
    assert!(Policy::parse_new_at(MINI, now).is_ok());
}

/// One upload reports everything wrong with a document at once, each with its line: a shape
/// error, a problem refused for a new activation only (a timed-pulse register past 65535) and a
/// schedule that never opens again. Before, they came in three rounds (each kind only once the
/// one before was fixed), and the last without a line.
#[test]
fn one_upload_reports_every_kind_of_problem_with_its_line() {
    let now = DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let text = edit(
        RELAY,
        "relay = { device = \"board-1\", coil = 536 }\ndevice_timed_pulse = true",
    )
    .replacen(
        "modbus = \"tcp://127.0.0.1:5020\"",
        "modbus = \"tcp://127.0.0.1:5020\"\ntimed_pulse = { register_base = 65000, unit_ms = 100 }",
        1,
    )
    .replacen(
        "always = [\"* * * * * *\"]",
        "always = [\"* * 8-17 * * Mon-Fri 2025\"]",
        1,
    )
    .replacen("[[levels]]", "colour = \"blue\"\n\n[[levels]]", 1);
    let errors = Policy::parse_new_at(&text, now).expect_err("refused");
    let found: Vec<(&str, Option<usize>)> =
        errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        found,
        [
            ("doors[0].relay.coil", Some(line_with(&text, "coil = 536"))),
            ("schedules.always", Some(line_with(&text, "always = "))),
            ("schedules.colour", Some(line_with(&text, "colour = "))),
        ],
        "{errors:#?}"
    );
    assert!(errors[1].message.contains("level `admin`"), "{}", errors[1]);
    // A zone that does not parse leaves no ground to say a schedule never opens.
    let no_zone = text.replacen("Asia/Almaty", "Mars/Olympus", 1);
    let errors = Policy::parse_new_at(&no_zone, now).expect_err("refused");
    assert!(errors.iter().any(|e| e.key == "timezone"), "{errors:#?}");
    assert!(
        errors.iter().all(|e| e.key != "schedules.always"),
        "{errors:#?}"
    );
}

/// Holidays as TOML dates (`2026-12-16`, unquoted) are dates; a date-time is refused with a
/// message that says so, not "invalid type: map".
#[test]
fn holidays_take_toml_dates() {
    let p = Policy::parse(&edit("", "").replacen(
        "timezone = \"Asia/Almaty\"",
        "timezone = \"Asia/Almaty\"\nholidays = [2026-12-16, \"2026-12-17\"]",
        1,
    ))
    .unwrap_or_else(|e| panic!("{e:#?}"));
    let want: Vec<NaiveDate> = ["2026-12-16", "2026-12-17"]
        .iter()
        .map(|d| schedule::parse_date(d).unwrap())
        .collect();
    assert_eq!(p.holidays.iter().copied().collect::<Vec<_>>(), want);
    let text = MINI.replacen(
        "timezone = \"Asia/Almaty\"",
        "timezone = \"Asia/Almaty\"\nholidays = [2026-12-16T08:00:00, 5]",
        1,
    );
    let errors = Policy::parse(&text).expect_err("refused");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(errors[0].key, "holidays[0]");
    assert!(errors[0].message.contains("time of day"), "{}", errors[0]);
    assert_eq!(errors[1].key, "holidays[1]");
    assert!(
        errors[1].message.contains("must be a date"),
        "{}",
        errors[1]
    );
}

/// `lease_s` on an unlock window: read (3..=3600), asked of the windows open now (the
/// shortest wins), and refused with a message naming what is missing when the door's board has
/// no pulse timer to hold it or the lease would not fit the timer's register.
#[test]
fn an_unlock_windows_lease_needs_a_board_timer_that_can_hold_it() {
    let now = "2026-11-28T06:00:00Z".parse().expect("instant");
    let main = DoorId("main".into());
    let timed = MINI.replace(
        "modbus = \"tcp://127.0.0.1:5020\"\n",
        "modbus = \"tcp://127.0.0.1:5020\"\ntimed_pulse = { register_base = 256, unit_ms = 100 }\n",
    );
    let window = "\n[[unlock_windows]]\ndoor = \"main\"\nschedule = \"always\"\n";
    let p = Policy::parse_new(&format!("{timed}{window}")).expect("accepted");
    assert_eq!(p.unlock_windows[0].lease_s, None);
    assert_eq!(p.lease_of(&main, now), None);
    let p = Policy::parse_new(&format!(
        "{timed}{window}lease_s = 30\n{window}lease_s = 12\n{window}"
    ))
    .expect("accepted");
    assert_eq!(p.unlock_windows[0].lease_s, Some(30));
    assert_eq!(p.lease_of(&main, now), Some(12), "the shortest lease asked");

    let errors_of = |doc: String| {
        Policy::parse_new(&doc)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.key, e.message))
            .collect::<Vec<_>>()
    };
    let e = errors_of(format!("{MINI}{window}lease_s = 30\n"));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0].0, "unlock_windows[0].lease_s");
    assert!(e[0].1.contains("`board-1` has no `timed_pulse`"), "{e:#?}");
    for bad in ["2", "3601", "0", "-5"] {
        let e = errors_of(format!("{timed}{window}lease_s = {bad}\n"));
        assert_eq!(e.len(), 1, "{bad}: {e:#?}");
        assert_eq!(e[0].0, "unlock_windows[0].lease_s");
        assert!(e[0].1.contains("out of range 3..=3600"), "{bad}: {e:#?}");
    }
    let e = errors_of(format!("{timed}{window}lease_s = \"30s\"\n"));
    assert_eq!(e[0].0, "unlock_windows[0].lease_s", "{e:#?}");
    // 3600 s in 10 ms units is past the register's 65535.
    let fine = timed.replace("unit_ms = 100", "unit_ms = 10");
    let e = errors_of(format!("{fine}{window}lease_s = 3600\n"));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].1.contains("360000 units"), "{e:#?}");
    Policy::parse_new(&format!("{fine}{window}lease_s = 600\n")).expect("60000 units fit");
    // A timer counting minutes cannot hold a lease of 30 s: the door would stay unlocked for a
    // whole minute after the gateway went silent.
    let minutes = timed.replace("unit_ms = 100", "unit_ms = 60000");
    let e = errors_of(format!("{minutes}{window}lease_s = 30\n"));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].1.contains("up to 60 s") && e[0].1.contains("multiple of 60 s"),
        "{e:#?}"
    );
    Policy::parse_new(&format!("{minutes}{window}lease_s = 120\n")).expect("two minutes");
    // The coil's register past 65535.
    let high = timed
        .replace("register_base = 256", "register_base = 65535")
        .replace("coil = 0 }", "coil = 1 }");
    let e = errors_of(format!("{high}{window}lease_s = 30\n"));
    assert!(
        e.iter()
            .any(|(k, m)| k == "unlock_windows[0].lease_s" && m.contains("past the last register")),
        "{e:#?}"
    );
}
