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
