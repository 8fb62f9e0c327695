//! Maintenance windows: allow and deny rules by day of week, time of day and
//! IANA time zone.
//!
//! A rule covers `[start, end)` local time on each of its days; when `end`
//! is not after `start` the window runs past midnight and belongs to the day
//! it starts on (`fri 22:00-06:00` covers Friday 22:00 to Saturday 06:00).
//! Times are compared as local wall-clock times of the instant in the rule's
//! zone, so across a DST change a window keeps its wall-clock bounds: on the
//! night clocks go forward an hour inside the window is skipped, on the
//! night they go back an hour is lived twice (both inside).
//!
//! A reboot may start when no deny rule covers the instant and, if there are
//! allow rules, at least one of them covers it. No rules: always open.

use std::fmt;

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use serde::{Deserialize, Serialize};

/// A rule as written in the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `"allow"` or `"deny"`.
    pub action: String,
    /// Days of week (`mon` ... `sun`, or ranges like `mon-fri`); empty: every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// Local start time, `HH:MM`.
    pub start: String,
    /// Local end time, `HH:MM` (not after `start`: past midnight).
    pub end: String,
    /// IANA time zone, e.g. `Europe/Berlin` (default `UTC`).
    #[serde(default = "utc")]
    pub time_zone: String,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// Whether a rule opens or closes time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Reboots may start inside.
    Allow,
    /// No reboot starts inside.
    Deny,
}

/// A parsed rule.
#[derive(Clone, Debug)]
pub struct Rule {
    action: Action,
    days: [bool; 7],
    start: Time,
    end: Time,
    zone: TimeZone,
    text: String,
}

/// The parsed rules.
#[derive(Clone, Debug, Default)]
pub struct Windows {
    rules: Vec<Rule>,
}

/// Whether a reboot may start, and which rule says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No rule is configured.
    NoRules,
    /// Inside this allow rule (and no deny rule).
    Allowed(String),
    /// Inside this deny rule.
    Denied(String),
    /// Allow rules exist and none covers the instant.
    OutsideAllow,
}

impl Verdict {
    /// Whether a reboot may start.
    #[must_use]
    pub fn open(&self) -> bool {
        matches!(self, Verdict::NoRules | Verdict::Allowed(_))
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::NoRules => f.write_str("no maintenance windows configured"),
            Verdict::Allowed(r) => write!(f, "inside allow window {r}"),
            Verdict::Denied(r) => write!(f, "inside deny window {r}"),
            Verdict::OutsideAllow => f.write_str("outside every allow window"),
        }
    }
}

const DAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

fn day(s: &str) -> Option<usize> {
    let s = s.trim().to_ascii_lowercase();
    DAYS.iter().position(|(short, _)| s == *short || (s.len() > 3 && s.starts_with(short)))
}

fn index(w: Weekday) -> usize {
    usize::try_from(w.to_monday_zero_offset()).unwrap_or(0)
}

fn parse_days(days: &[String]) -> Result<[bool; 7], String> {
    if days.is_empty() {
        return Ok([true; 7]);
    }
    let mut set = [false; 7];
    for d in days {
        let bad = || format!("{d:?} is not a day: expected mon, tue, wed, thu, fri, sat, sun or a range like mon-fri");
        if let Some((a, b)) = d.split_once('-') {
            let (a, b) = (day(a).ok_or_else(bad)?, day(b).ok_or_else(bad)?);
            let mut i = a;
            loop {
                set[i] = true;
                if i == b {
                    break;
                }
                i = (i + 1) % 7;
            }
        } else {
            set[day(d).ok_or_else(bad)?] = true;
        }
    }
    Ok(set)
}

fn parse_time(s: &str) -> Result<Time, String> {
    let bad = || format!("{s:?} is not a time of day: expected HH:MM (24-hour), e.g. \"22:30\"");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

impl Rule {
    /// Parses a rule; the error names the field (`action`, `days`, `start`,
    /// `end`, `time_zone`) and the accepted form.
    pub fn parse(c: &RuleConfig) -> Result<Rule, (&'static str, String)> {
        let action = match c.action.trim().to_ascii_lowercase().as_str() {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            other => return Err(("action", format!("{other:?}: expected \"allow\" or \"deny\""))),
        };
        let days = parse_days(&c.days).map_err(|m| ("days", m))?;
        let start = parse_time(&c.start).map_err(|m| ("start", m))?;
        let end = parse_time(&c.end).map_err(|m| ("end", m))?;
        let zone = TimeZone::get(c.time_zone.trim()).map_err(|e| {
            (
                "time_zone",
                format!("{:?} is not a known IANA time zone ({e}): e.g. \"Europe/Berlin\" or \"UTC\"", c.time_zone),
            )
        })?;
        let text = format!(
            "{} {} {}-{} {}",
            c.action.trim().to_ascii_lowercase(),
            if c.days.is_empty() { "every day".to_owned() } else { c.days.join(",") },
            c.start.trim(),
            c.end.trim(),
            c.time_zone.trim()
        );
        Ok(Rule { action, days, start, end, zone, text })
    }

    /// Whether the rule covers `at`.
    #[must_use]
    pub fn covers(&self, at: Timestamp) -> bool {
        let local: Zoned = at.to_zoned(self.zone.clone());
        let (today, now) = (index(local.weekday()), local.time());
        if self.start < self.end {
            self.days[today] && now >= self.start && now < self.end
        } else {
            // Past midnight: the evening part belongs to today, the morning
            // part to the day before.
            (self.days[today] && now >= self.start) || (self.days[index(local.weekday().previous())] && now < self.end)
        }
    }

    /// The rule as written (for logs and the gate's environment).
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Allow or deny.
    #[must_use]
    pub fn action(&self) -> Action {
        self.action
    }
}

impl Windows {
    /// Parses every rule; the error is `(index, field, message)`.
    pub fn parse(rules: &[RuleConfig]) -> Result<Windows, (usize, &'static str, String)> {
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, r)| Rule::parse(r).map_err(|(field, m)| (i, field, m)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Windows { rules })
    }

    /// The verdict at `at`.
    #[must_use]
    pub fn at(&self, at: Timestamp) -> Verdict {
        if self.rules.is_empty() {
            return Verdict::NoRules;
        }
        if let Some(r) = self.rules.iter().find(|r| r.action == Action::Deny && r.covers(at)) {
            return Verdict::Denied(r.text.clone());
        }
        let mut allows = self.rules.iter().filter(|r| r.action == Action::Allow).peekable();
        if allows.peek().is_none() {
            return Verdict::NoRules;
        }
        match allows.find(|r| r.covers(at)) {
            Some(r) => Verdict::Allowed(r.text.clone()),
            None => Verdict::OutsideAllow,
        }
    }

    /// The rules, one per line, as written.
    #[must_use]
    pub fn describe(&self) -> String {
        self.rules.iter().map(|r| r.text.as_str()).collect::<Vec<_>>().join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(action: &str, days: &[&str], start: &str, end: &str, tz: &str) -> RuleConfig {
        RuleConfig {
            action: action.into(),
            days: days.iter().map(|d| (*d).to_owned()).collect(),
            start: start.into(),
            end: end.into(),
            time_zone: tz.into(),
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// (instant in UTC, covered?) for one rule.
    fn table(r: &RuleConfig, cases: &[(&str, bool)]) {
        let rule = Rule::parse(r).unwrap();
        for (at, want) in cases {
            assert_eq!(rule.covers(ts(at)), *want, "{} at {at}", rule.text());
        }
    }

    #[test]
    fn europe_berlin_across_both_dst_changes() {
        // 2026: clocks go forward on Sun 29 March (02:00 CET -> 03:00 CEST),
        // back on Sun 25 October (03:00 CEST -> 02:00 CET).
        let night = rule("allow", &["sun"], "01:30", "03:30", "Europe/Berlin");
        table(
            &night,
            &[
                // Spring: 01:30 CET = 00:30Z; 02:00-03:00 local does not exist;
                // 03:30 CEST = 01:30Z. The window is 1 h long that night.
                ("2026-03-29T00:29:00Z", false),
                ("2026-03-29T00:30:00Z", true),
                ("2026-03-29T00:59:59Z", true), // 01:59:59 CET
                ("2026-03-29T01:00:00Z", true), // 03:00 CEST
                ("2026-03-29T01:29:59Z", true),
                ("2026-03-29T01:30:00Z", false), // 03:30 CEST
                // Autumn: 01:30 CEST = 23:30Z Sat; 02:00-03:00 is lived
                // twice; 03:30 CET = 02:30Z. The window is 3 h long.
                ("2026-10-24T23:29:00Z", false),
                ("2026-10-24T23:30:00Z", true),
                ("2026-10-25T00:30:00Z", true), // 02:30 CEST
                ("2026-10-25T01:30:00Z", true), // 02:30 CET, the second time
                ("2026-10-25T02:29:59Z", true),
                ("2026-10-25T02:30:00Z", false),
                // A Sunday without a change: 2 h, from 00:30Z (CET) ...
                ("2026-03-22T00:30:00Z", true),
                ("2026-03-22T02:30:00Z", false),
                // ... and not on Saturday.
                ("2026-03-28T00:30:00Z", false),
            ],
        );
    }

    #[test]
    fn america_new_york_overnight_window_across_dst() {
        // 2026: forward Sun 8 March 02:00 EST -> 03:00 EDT; back Sun 1 November 02:00 EDT -> 01:00 EST.
        let overnight = rule("allow", &["sat"], "23:00", "04:00", "America/New_York");
        table(
            &overnight,
            &[
                // Sat 7 March 23:00 EST = 04:00Z Sun; ends Sun 04:00 EDT = 08:00Z (4 h long).
                ("2026-03-08T03:59:00Z", false),
                ("2026-03-08T04:00:00Z", true),
                ("2026-03-08T06:30:00Z", true), // 01:30 EST
                ("2026-03-08T07:00:00Z", true), // 03:00 EDT (02:xx skipped)
                ("2026-03-08T07:59:59Z", true),
                ("2026-03-08T08:00:00Z", false),
                // Sat 31 Oct 23:00 EDT = 03:00Z; ends Sun 04:00 EST = 09:00Z (6 h long).
                ("2026-11-01T02:59:00Z", false),
                ("2026-11-01T03:00:00Z", true),
                ("2026-11-01T05:30:00Z", true), // 01:30 EDT
                ("2026-11-01T06:30:00Z", true), // 01:30 EST, the second time
                ("2026-11-01T08:59:59Z", true),
                ("2026-11-01T09:00:00Z", false),
                // The morning part belongs to Saturday's window: not Monday morning.
                ("2026-11-02T07:00:00Z", false),
            ],
        );
    }

    #[test]
    fn deny_wins_and_no_allow_rules_means_open() {
        let w = Windows::parse(&[
            rule("allow", &["mon-fri"], "00:00", "23:59", "UTC"),
            rule("deny", &["wed"], "12:00", "13:00", "UTC"),
        ])
        .unwrap();
        // 2026-12-02 is a Wednesday.
        assert!(w.at(ts("2026-12-02T11:59:00Z")).open());
        assert_eq!(w.at(ts("2026-12-02T12:30:00Z")), Verdict::Denied("deny wed 12:00-13:00 UTC".into()));
        assert_eq!(w.at(ts("2026-12-05T10:00:00Z")), Verdict::OutsideAllow); // Saturday
        let only_deny = Windows::parse(&[rule("deny", &["fri-mon"], "00:00", "00:00", "UTC")]).unwrap();
        // start == end: the whole day, and fri-mon wraps over the weekend.
        assert!(!only_deny.at(ts("2026-12-06T10:00:00Z")).open()); // Sunday
        assert!(!only_deny.at(ts("2026-12-07T10:00:00Z")).open()); // Monday
        assert!(only_deny.at(ts("2026-12-08T10:00:00Z")).open()); // Tuesday
        assert_eq!(Windows::default().at(ts("2026-12-08T10:00:00Z")), Verdict::NoRules);
    }

    #[test]
    fn bad_rules_name_the_field() {
        let cases = [
            (rule("permit", &[], "01:00", "02:00", "UTC"), "action"),
            (rule("allow", &["funday"], "01:00", "02:00", "UTC"), "days"),
            (rule("allow", &[], "25:00", "02:00", "UTC"), "start"),
            (rule("allow", &[], "01:00", "2pm", "UTC"), "end"),
            (rule("allow", &[], "01:00", "02:00", "Mars/Olympus"), "time_zone"),
        ];
        for (r, field) in cases {
            let (i, f, m) = Windows::parse(&[r]).unwrap_err();
            assert_eq!((i, f), (0, field), "{m}");
            assert!(m.contains("expected") || m.contains("e.g."), "{m}");
        }
    }
}
