//! Time in the site's own calendar: cron windows, holiday dates and validity bounds.
//!
//! A [`Window`] is one named schedule of the site policy: one or more `cron` 0.17 expressions
//! (`sec min hour dom month dow [year]`) read as predicates on *wall-clock* time. `includes(t)`
//! asks whether the wall-clock reading of `t`, in `t`'s own zone, matches any expression, so a
//! caller converts an instant to the site zone first (`t.with_timezone(&site_tz)`). Daylight
//! saving is then the zone's business, exactly as cron documents it: a local hour skipped by a
//! spring-forward never matches (a `* * 2-3 * * *` window in Europe/Berlin is open one hour on
//! 2026-03-29), and a local hour repeated by a fall-back matches both times (three hours open on
//! 2026-10-25).
//!
//! Invariants: every expression of a window has 6 or 7 fields and `*` in the seconds field (cron
//! matches seconds exactly, so anything else would be a window a few seconds wide); days of the
//! week count Sunday = 1 … Saturday = 7 or use names (`Mon-Fri`); day-of-month and day-of-week
//! must both match (cron 0.17 semantics, not Vixie cron's "either"). Pure: no clock is read here;
//! every instant is an argument.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use cron::Schedule;
use std::fmt;
use std::str::FromStr;

/// A named schedule: the union of one or more cron windows, in wall-clock time.
#[derive(Clone, Debug)]
pub struct Window {
    schedules: Vec<Schedule>,
}

impl Window {
    /// Parses every expression; the error names each bad one by its index (`[1] ...`).
    pub fn parse(exprs: &[String]) -> Result<Window, String> {
        if exprs.is_empty() {
            return Err("a schedule needs at least one cron window".to_owned());
        }
        let mut schedules = Vec::with_capacity(exprs.len());
        let mut errors = Vec::new();
        for (i, expr) in exprs.iter().enumerate() {
            match parse_expr(expr) {
                Ok(s) => schedules.push(s),
                Err(e) => errors.push(format!("[{i}] {e}")),
            }
        }
        if errors.is_empty() {
            Ok(Window { schedules })
        } else {
            Err(errors.join("; "))
        }
    }

    /// A window of expressions already checked with [`parse_expr`].
    pub fn from_schedules(schedules: Vec<Schedule>) -> Window {
        Window { schedules }
    }

    /// Whether the wall-clock reading of `t` (in `t`'s own zone) falls in any of the windows.
    pub fn includes<Tz: TimeZone>(&self, t: &DateTime<Tz>) -> bool {
        self.schedules.iter().any(|s| s.includes(t.clone()))
    }

    /// Whether any of the windows opens after `t` (in `t`'s own zone, as [`Window::includes`]).
    pub fn opens_after<Tz: TimeZone>(&self, t: &DateTime<Tz>) -> bool {
        self.schedules.iter().any(|s| s.after(t).next().is_some())
    }

    /// The source expressions, in document order.
    pub fn exprs(&self) -> impl Iterator<Item = &str> {
        self.schedules.iter().map(Schedule::source)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.exprs().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "`{e}`")?;
        }
        Ok(())
    }
}

/// The fields of a window expression as cron 0.17 reads them. Its grammar allows whitespace
/// around the numbers and names of a list, a range or a step (`8-11, 13-17` is one hours
/// field), so a plain split on whitespace would count such a list as several fields (and take
/// the wrong one for the day of week); whitespace next to `,`, `-` or `/` is joined first.
fn cron_fields(expr: &str) -> Vec<String> {
    let joins = |c: Option<char>| matches!(c, Some(',' | '-' | '/'));
    let chars: Vec<char> = expr.trim().chars().collect();
    let mut joined = String::with_capacity(expr.len());
    for (i, &c) in chars.iter().enumerate() {
        if c.is_whitespace() {
            let before = joined.chars().next_back();
            let after = chars[i + 1..].iter().copied().find(|c| !c.is_whitespace());
            if joins(before) || joins(after) {
                continue;
            }
        }
        joined.push(c);
    }
    joined.split_whitespace().map(str::to_owned).collect()
}

/// Parses one window expression: 6 or 7 fields, `*` seconds, then cron's own grammar.
pub fn parse_expr(expr: &str) -> Result<Schedule, String> {
    let fields = cron_fields(expr);
    if !(6..=7).contains(&fields.len()) {
        return Err(format!(
            "`{expr}` has {} field(s); a window needs 6 or 7: sec min hour dom month dow [year]",
            fields.len()
        ));
    }
    if fields[0] != "*" {
        return Err(format!(
            "`{expr}`: the seconds field must be `*` (cron matches seconds exactly, so `{}` \
             would open the window only during those seconds)",
            fields[0]
        ));
    }
    Schedule::from_str(expr).map_err(|e| cron_error(expr, &e.to_string()))
}

/// The fields of a window expression, by position.
const FIELD_NAMES: [&str; 7] = [
    "seconds",
    "minutes",
    "hours",
    "day of month",
    "month",
    "day of week",
    "year",
];

/// cron's refusal of `expr` as one line that names the field: cron writes the expression, a
/// caret under the column it stopped at and then its message (sometimes empty, and with "less
/// than N" for a largest allowed value of N), which lands in one-line places (a log line, the
/// JSON `errors` of `PUT /admin/v1/policy`).
fn cron_error(expr: &str, raw: &str) -> String {
    let lines: Vec<&str> = raw.lines().collect();
    let caret = lines
        .iter()
        .position(|l| l.trim() == "^")
        .map(|i| (lines[i].find('^').unwrap_or(0), i));
    let (message, field) = match caret {
        Some((col, i)) => {
            let message = lines[i + 1..].join(" ");
            // The field the caret is in: the words of the expression before its column.
            // (`get`: the column is a byte offset only for ASCII; elsewhere, no field named.)
            let before = expr.get(..col.min(expr.len())).unwrap_or("");
            let index = before.split_whitespace().count();
            let starts_word = before.chars().last().is_none_or(char::is_whitespace);
            let index = if starts_word {
                index
            } else {
                index.saturating_sub(1)
            };
            let word = expr.split_whitespace().nth(index).unwrap_or("");
            (message, Some((index, word)))
        }
        None => (raw.replace('\n', " "), None),
    };
    let mut message = message
        .trim()
        .replace("must be less than ", "must be at most ");
    let name = field.and_then(|(i, _)| FIELD_NAMES.get(i).copied());
    if message.is_empty() {
        message = match name {
            Some("year") => "not a year or range of years cron reads (1970 to 2100)".into(),
            _ => "not something cron reads in this field".into(),
        };
    }
    let hint = match (
        name,
        message.contains("Invalid range") || message.contains("Invalid named range"),
    ) {
        (Some("hours"), true) => {
            " (a window across midnight is two ranges: e.g. `22-23,0-5` for 22:00 to 06:00; when \
             the days are named, the hours after midnight belong to the next day: write two \
             windows, e.g. `* * 22-23 * * Mon-Fri` and `* * 0-5 * * Tue-Sat`)"
        }
        (Some("day of week"), true) => {
            " (a range cannot wrap past the end of the week: write the days as a list, e.g. \
             `Sat,Sun`, or as two ranges)"
        }
        (Some("month"), true) => {
            " (a range cannot wrap past the end of the year: write two ranges, e.g. `Dec,Jan` or \
             `Nov-Dec,Jan-Feb`)"
        }
        (_, true) => {
            " (a range must go from the smaller value to the larger: a range that wraps around \
             is written as two, e.g. `22-23,0-5`)"
        }
        _ => "",
    };
    match (field, name) {
        (Some((_, word)), Some(name)) => format!("`{expr}`: {name} `{word}`: {message}{hint}"),
        _ => format!("`{expr}`: {message}{hint}"),
    }
}

/// A warning for a window whose day-of-week field uses numbers: cron 0.17 counts Sunday = 1 …
/// Saturday = 7, where crontab counts Monday = 1, so a crontab habit (`1-5` for the working
/// week) silently opens the window Sunday to Thursday. Not an error: a policy already in the log
/// must keep parsing as it did.
pub fn numeric_weekdays(expr: &str) -> Option<String> {
    let dow = cron_fields(expr).into_iter().nth(5)?;
    dow.contains(|c: char| c.is_ascii_digit()).then(|| {
        format!(
            "`{expr}`: the day of week `{dow}` counts Sunday = 1 … Saturday = 7, not crontab's \
             Monday = 1 (`1-5` is Sunday to Thursday); day names (`Mon-Fri`) say what they mean"
        )
    })
}

/// A warning for a window that restricts both the day of month and the day of week: cron 0.17
/// opens it only on days that match both (`* * 8-17 1 * Mon` is "the 1st, when it is a
/// Monday"), where crontab opens it on days that match either.
pub fn both_day_fields(expr: &str) -> Option<String> {
    let fields = cron_fields(expr);
    let restricted = |f: &str| !matches!(f, "*" | "?");
    (fields.len() >= 6 && restricted(&fields[3]) && restricted(&fields[5])).then(|| {
        format!(
            "`{expr}`: the window opens only on days that match both the day of month `{}` and \
             the day of week `{}` (crontab opens it on days that match either); write two \
             windows for either",
            fields[3], fields[5]
        )
    })
}

/// A warning for a window that no instant matches (`* * 8-17 30 Feb *`, a year long past):
/// it never opens. Looked for from the Unix epoch, so the answer does not depend on when the
/// document is read; [`Window::opens_after`] asks about a given instant.
pub fn never_matches(expr: &str, schedule: &Schedule) -> Option<String> {
    schedule
        .after(&DateTime::<Utc>::UNIX_EPOCH)
        .next()
        .is_none()
        .then(|| format!("`{expr}` matches no date: the window never opens"))
}

/// A strict `YYYY-MM-DD` calendar date (holidays, validity dates); anything else is `None`.
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits(0..4) {
        return None;
    }
    if !digits(5..7) || !digits(8..10) {
        return None;
    }
    let year = s[0..4].parse().ok()?;
    let month = s[5..7].parse().ok()?;
    let day = s[8..10].parse().ok()?;
    NaiveDate::from_ymd_opt(year, month, day)
}

/// One end of a user's validity window (`metadata.valid_from` / `valid_until`): an RFC 3339
/// instant, or a calendar date read in the site zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Instant(DateTime<Utc>),
    Date(NaiveDate),
}

impl Bound {
    /// `2026-06-01` or `2026-06-01T08:00:00+05:00`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Bound> {
        if let Some(d) = parse_date(s) {
            return Some(Bound::Date(d));
        }
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| Bound::Instant(t.with_timezone(&Utc)))
    }

    /// As a `valid_from`: has the user become valid at `at` (whose site-zone date is
    /// `local_date`)? A date counts from 00:00 site time of that day.
    pub fn started(self, at: DateTime<Utc>, local_date: NaiveDate) -> bool {
        match self {
            Bound::Instant(t) => at >= t,
            Bound::Date(d) => local_date >= d,
        }
    }

    /// As a `valid_until`: is the user still valid at `at`? An instant is inclusive; a date
    /// counts through 23:59:59.999… site time of that day.
    pub fn not_ended(self, at: DateTime<Utc>, local_date: NaiveDate) -> bool {
        match self {
            Bound::Instant(t) => at <= t,
            Bound::Date(d) => local_date <= d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Tz;

    fn window(exprs: &[&str]) -> Window {
        let v: Vec<String> = exprs.iter().map(|s| s.to_string()).collect();
        Window::parse(&v).unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// (instant in UTC, expected `includes` in the zone).
    fn check(w: &Window, tz: Tz, table: &[(&str, bool)]) {
        for (at, want) in table {
            let local = utc(at).with_timezone(&tz);
            assert_eq!(w.includes(&local), *want, "{at} = {local} in {tz}");
        }
    }

    #[test]
    fn expressions_parse_with_six_or_seven_fields() {
        assert!(parse_expr("* * 8-17 * * Mon-Fri").is_ok());
        assert!(parse_expr("* * 8-17 * * Mon-Fri 2026").is_ok());
        assert!(parse_expr("* 0-29 8 ? * *").is_ok());
        // What the messages for wrapping ranges suggest.
        assert!(parse_expr("* * 22-23,0-5 * * *").is_ok());
        assert!(parse_expr("* * 8-17 * * Sat,Sun").is_ok());
    }

    #[test]
    fn numeric_weekdays_are_warned_about_names_are_not() {
        let w = numeric_weekdays("* * 8-17 * * 1-5").expect("warned");
        assert!(w.contains("Sunday = 1") && w.contains("Mon-Fri"), "{w}");
        assert!(numeric_weekdays("* * 8-17 * * */2").is_some());
        for quiet in [
            "* * 8-17 * * Mon-Fri",
            "* * 8-17 * * *",
            "* * 8-17 1-5 * ?",
            "* *",
        ] {
            assert_eq!(numeric_weekdays(quiet), None, "{quiet}");
        }
        // What the warning is about: `1-5` really is Sunday to Thursday here.
        let w = Window::parse(&["* * * * * 1-5".to_owned()]).unwrap();
        let sunday = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
        let friday = Utc.with_ymd_and_hms(2026, 3, 6, 12, 0, 0).unwrap();
        assert!(w.includes(&sunday) && !w.includes(&friday));
    }

    #[test]
    fn bad_expressions_say_why() {
        let cases = [
            ("* 8-17 * * Mon-Fri", "5 field(s)"),
            ("* * 8-17 * * Mon-Fri 2026 x", "8 field(s)"),
            ("@daily", "1 field(s)"),
            ("0 * 8-17 * * Mon-Fri", "seconds field must be `*`"),
            ("*/5 * 8-17 * * *", "seconds field must be `*`"),
            ("* * 25 * * *", "`* * 25 * * *`"),
            ("* * 8-17 * * Funday", "Funday"),
            // Ranges that wrap: cron refuses them; the message says how to write them.
            ("* * 22-6 * * *", "`22-23,0-5`"),
            ("* * 8-17 * * Sat-Sun", "`Sat,Sun`"),
            ("* 50-10 * * * *", "written as two"),
            // With named days, the hours after midnight are the next day's.
            ("* * 22-6 * * Mon-Fri", "`* * 0-5 * * Tue-Sat`"),
            ("* * 8-17 * Dec-Jan *", "`Dec,Jan`"),
            // One line, naming the field and its largest value; never an empty reason.
            ("* * 24 * * *", "hours `24`: Hours must be at most 23"),
            ("* 60 * * * *", "minutes `60`: Minutes must be at most 59"),
            (
                "* * * * * * 2101",
                "year `2101`: not a year or range of years cron reads",
            ),
            (
                "* * 1,2,,4 * * *",
                "hours `1,2,,4`: not something cron reads",
            ),
            // Not ASCII: no panic, whatever column cron points at.
            ("* * 8-17 * * Пн-Пт", "`* * 8-17 * * Пн-Пт`"),
            ("* * 8-17 * Декабрь *", "`* * 8-17 * Декабрь *`"),
            ("* * ☃ * * *", "`* * ☃ * * *`"),
            ("* * 8-17 * * Mon-Пт", "`* * 8-17 * * Mon-Пт`"),
        ];
        for (expr, want) in cases {
            let err = parse_expr(expr).unwrap_err();
            assert!(err.contains(want), "{expr}: {err}");
            assert!(!err.contains('\n') && !err.contains('^'), "{expr}: {err:?}");
        }
    }

    #[test]
    fn a_window_parse_names_every_bad_expression() {
        let exprs = [
            "* * 8 * * *".to_owned(),
            "0 * * * * *".to_owned(),
            "x".to_owned(),
        ];
        let err = Window::parse(&exprs).unwrap_err();
        assert!(err.starts_with("[1] "), "{err}");
        assert!(err.contains("; [2] "), "{err}");
        assert!(Window::parse(&[]).is_err());
    }

    #[test]
    fn business_hours_in_almaty_utc_plus_5() {
        let w = window(&["* * 8-17 * * Mon-Fri"]);
        // 2026-06-01 is a Monday; Almaty is UTC+5 all year (no DST).
        check(
            &w,
            chrono_tz::Asia::Almaty,
            &[
                ("2026-06-01T02:59:59Z", false), // 07:59:59
                ("2026-06-01T03:00:00Z", true),  // 08:00:00
                ("2026-06-01T12:59:59Z", true),  // 17:59:59
                ("2026-06-01T13:00:00Z", false), // 18:00:00
                ("2026-06-06T05:00:00Z", false), // Saturday 10:00
                ("2026-06-07T05:00:00Z", false), // Sunday 10:00
                ("2026-06-05T05:00:00Z", true),  // Friday 10:00
            ],
        );
    }

    #[test]
    fn the_weekday_is_the_site_weekday_not_the_utc_one() {
        let w = window(&["* * * * * Mon"]);
        // Sunday 2026-05-31 20:00 UTC is already Monday 01:00 in Almaty.
        check(
            &w,
            chrono_tz::Asia::Almaty,
            &[
                ("2026-05-31T18:59:59Z", false),
                ("2026-05-31T19:00:00Z", true),
            ],
        );
    }

    #[test]
    fn berlin_spring_forward_skips_the_two_oclock_hour() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST at 01:00 UTC. Local hour 2 never happens,
        // local hour 3 runs 01:00–01:59:59 UTC: the window is open one hour that night.
        let w = window(&["* * 2-3 * * *"]);
        check(
            &w,
            chrono_tz::Europe::Berlin,
            &[
                ("2026-03-29T00:00:00Z", false), // 01:00 CET
                ("2026-03-29T00:59:59Z", false), // 01:59:59 CET
                ("2026-03-29T01:00:00Z", true),  // 03:00 CEST
                ("2026-03-29T01:59:59Z", true),  // 03:59:59 CEST
                ("2026-03-29T02:00:00Z", false), // 04:00 CEST
                ("2026-03-29T03:00:00Z", false), // 05:00 CEST
                ("2026-03-28T01:00:00Z", true),  // the day before: 02:00 CET
            ],
        );
        // A daily 02:30 (one minute wide) does not occur on the spring-forward day.
        let w = window(&["* 30 2 * * *"]);
        let day = |h: u32| -> Vec<(String, bool)> {
            (0..24 * 60)
                .map(|m| format!("2026-03-{h:02}T{:02}:{:02}:00Z", m / 60, m % 60))
                .map(|s| {
                    let open = w.includes(&utc(&s).with_timezone(&chrono_tz::Europe::Berlin));
                    (s, open)
                })
                .filter(|(_, open)| *open)
                .collect()
        };
        assert_eq!(day(29), vec![]);
        assert_eq!(day(28), vec![("2026-03-28T01:30:00Z".to_owned(), true)]);
    }

    #[test]
    fn berlin_fall_back_repeats_the_two_oclock_hour() {
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET at 01:00 UTC. Local 02:xx happens twice
        // (00:00 and 01:00 UTC), then 03:xx CET (02:00 UTC): open three hours.
        let w = window(&["* * 2-3 * * *"]);
        check(
            &w,
            chrono_tz::Europe::Berlin,
            &[
                ("2026-10-24T23:59:59Z", false), // 01:59:59 CEST
                ("2026-10-25T00:00:00Z", true),  // 02:00 CEST
                ("2026-10-25T00:59:59Z", true),  // 02:59:59 CEST
                ("2026-10-25T01:00:00Z", true),  // 02:00 CET (again)
                ("2026-10-25T01:59:59Z", true),  // 02:59:59 CET
                ("2026-10-25T02:00:00Z", true),  // 03:00 CET
                ("2026-10-25T02:59:59Z", true),  // 03:59:59 CET
                ("2026-10-25T03:00:00Z", false), // 04:00 CET
                ("2026-10-25T04:00:00Z", false), // 05:00 CET
            ],
        );
    }

    #[test]
    fn new_york_dst_moves_the_window_in_utc() {
        let business = window(&["* * 9-16 * * Mon-Fri"]);
        // 2026-03-06 (Fri) is EST (UTC-5); 2026-03-09 (Mon) is EDT (UTC-4), the day after the
        // 2026-03-08 switch.
        check(
            &business,
            chrono_tz::America::New_York,
            &[
                ("2026-03-06T13:59:59Z", false), // 08:59:59 EST
                ("2026-03-06T14:00:00Z", true),  // 09:00 EST
                ("2026-03-06T21:59:59Z", true),  // 16:59:59 EST
                ("2026-03-06T22:00:00Z", false), // 17:00 EST
                ("2026-03-09T12:59:59Z", false), // 08:59:59 EDT
                ("2026-03-09T13:00:00Z", true),  // 09:00 EDT
                ("2026-03-09T20:59:59Z", true),  // 16:59:59 EDT
                ("2026-03-09T21:00:00Z", false), // 17:00 EDT
            ],
        );
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT at 07:00 UTC; hour 2 never happens.
        let two = window(&["* * 2 * * *"]);
        check(
            &two,
            chrono_tz::America::New_York,
            &[
                ("2026-03-08T06:59:59Z", false), // 01:59:59 EST
                ("2026-03-08T07:00:00Z", false), // 03:00 EDT
                ("2026-03-08T07:59:59Z", false), // 03:59:59 EDT
            ],
        );
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST at 06:00 UTC; hour 1 happens twice.
        let one = window(&["* * 1 * * *"]);
        check(
            &one,
            chrono_tz::America::New_York,
            &[
                ("2026-11-01T04:59:59Z", false), // 00:59:59 EDT
                ("2026-11-01T05:00:00Z", true),  // 01:00 EDT
                ("2026-11-01T05:59:59Z", true),  // 01:59:59 EDT
                ("2026-11-01T06:00:00Z", true),  // 01:00 EST (again)
                ("2026-11-01T06:59:59Z", true),  // 01:59:59 EST
                ("2026-11-01T07:00:00Z", false), // 02:00 EST
            ],
        );
    }

    #[test]
    fn a_window_is_the_union_of_its_expressions() {
        let w = window(&["* * 22-23 * * *", "* * 0-5 * * *"]);
        check(
            &w,
            chrono_tz::UTC,
            &[
                ("2026-06-01T21:59:59Z", false),
                ("2026-06-01T22:00:00Z", true),
                ("2026-06-02T05:59:59Z", true),
                ("2026-06-02T06:00:00Z", false),
            ],
        );
        assert_eq!(w.to_string(), "`* * 22-23 * * *`, `* * 0-5 * * *`");
    }

    #[test]
    fn dates_are_strict() {
        assert_eq!(
            parse_date("2026-12-16"),
            NaiveDate::from_ymd_opt(2026, 12, 16)
        );
        for bad in [
            "2026-1-16",
            "2026-13-01",
            "2026-02-29",
            "16.12.2026",
            "2026-12-16T00:00:00Z",
            "",
            "+202-12-16",
            "２026-12-16",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert!(parse_date("2028-02-29").is_some());
    }

    #[test]
    fn bounds_are_dates_or_rfc3339_instants() {
        let d = NaiveDate::from_ymd_opt(2026, 6, 1).unwrap();
        assert_eq!(Bound::parse("2026-06-01"), Some(Bound::Date(d)));
        assert_eq!(
            Bound::parse("2026-06-01T10:00:00+05:00"),
            Some(Bound::Instant(utc("2026-06-01T05:00:00Z")))
        );
        assert_eq!(Bound::parse("tomorrow"), None);
        assert_eq!(Bound::parse("2026-06-01 10:00"), None);

        let at = utc("2026-06-01T05:00:00Z");
        let inst = Bound::Instant(at);
        assert!(inst.started(at, d) && inst.not_ended(at, d));
        let later = at + chrono::Duration::seconds(1);
        assert!(!inst.not_ended(later, d));
        let earlier = at - chrono::Duration::seconds(1);
        assert!(!inst.started(earlier, d));
        let next = d.succ_opt().unwrap();
        assert!(Bound::Date(d).started(at, d) && !Bound::Date(next).started(at, d));
        assert!(Bound::Date(d).not_ended(at, d) && !Bound::Date(d).not_ended(at, next));
    }
}
