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
//! A disruptive action (a reboot, a drain, a replacement; in host mode a
//! reboot) may start when no deny rule covers the instant and, if there are
//! allow rules, at least one of them covers it. No rules: always open.
//!
//! Both modes use these rules: host mode asks [`Windows::at`] before each
//! reboot; cluster mode runs [`drive`], which sets the engine's
//! [`Controls::set_window_closed`] at every change. [`Windows::next_change`]
//! finds the next instant the verdict flips (the next opening or closing),
//! exactly, across DST changes: [`drive`] sleeps until then instead of
//! polling. An action that falls due while the window is closed is held
//! (reason `MaintenanceWindow`, with an Event) and starts when it opens.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use health_core::{Clock, Controls};
use jiff::civil::{Date, Time, Weekday};
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
    /// Disruptive actions may start inside.
    Allow,
    /// No disruptive action starts inside.
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

/// Whether a disruptive action may start, and which rule says so.
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
    /// Only deny rules exist, and none covers the instant.
    OutsideDeny,
}

impl Verdict {
    /// Whether a disruptive action may start.
    #[must_use]
    pub fn open(&self) -> bool {
        matches!(self, Verdict::NoRules | Verdict::Allowed(_) | Verdict::OutsideDeny)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::NoRules => f.write_str("no maintenance windows configured"),
            Verdict::Allowed(r) => write!(f, "inside allow window {r}"),
            Verdict::Denied(r) => write!(f, "inside deny window {r}"),
            Verdict::OutsideAllow => f.write_str("outside every allow window"),
            Verdict::OutsideDeny => f.write_str("outside every deny window"),
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

    /// The instants at which this rule can begin or stop covering time, in
    /// the days `from` to `to` (local dates): each start and end on every
    /// date (both readings of a time lived twice, both sides of a time
    /// skipped), and every change of the zone's offset between them.
    fn boundaries(&self, from: Date, to: Date, out: &mut Vec<Timestamp>) {
        let mut d = from;
        while d <= to {
            for t in [self.start, self.end] {
                let amb = self.zone.to_ambiguous_timestamp(d.to_datetime(t));
                out.extend(amb.earlier().ok());
                out.extend(amb.later().ok());
            }
            let Ok(next) = d.tomorrow() else { break };
            d = next;
        }
        let (Ok(first), Ok(last)) = (
            self.zone.to_ambiguous_timestamp(from.to_datetime(Time::midnight())).earlier(),
            self.zone.to_ambiguous_timestamp(to.to_datetime(Time::midnight())).later(),
        ) else {
            return;
        };
        out.extend(self.zone.following(first).map(|t| t.timestamp()).take_while(|&t| t <= last));
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
            return Verdict::OutsideDeny;
        }
        match allows.find(|r| r.covers(at)) {
            Some(r) => Verdict::Allowed(r.text.clone()),
            None => Verdict::OutsideAllow,
        }
    }

    /// The first instant after `from` at which the verdict opens or closes
    /// (within the next 8 days); `None` when it does not change in that
    /// time (no rules, or rules that cover all or none of it).
    ///
    /// Exact across DST changes: the verdict can only change at a rule's
    /// start or end (read in its zone, both readings of an hour lived
    /// twice) or when a zone's offset changes, so those instants are the
    /// only candidates.
    #[must_use]
    pub fn next_change(&self, from: Timestamp) -> Option<Timestamp> {
        let open = self.at(from).open();
        let mut candidates = Vec::new();
        for r in &self.rules {
            let today = from.to_zoned(r.zone.clone()).date();
            let (Ok(first), Ok(last)) = (today.yesterday(), today.checked_add(jiff::Span::new().days(9))) else {
                continue;
            };
            r.boundaries(first, last, &mut candidates);
        }
        let horizon = from.checked_add(jiff::SignedDuration::from_hours(8 * 24)).ok()?;
        candidates.retain(|&t| t > from && t <= horizon);
        candidates.sort_unstable();
        candidates.dedup();
        candidates.into_iter().find(|&t| self.at(t).open() != open)
    }

    /// Whether any rule is configured.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules, one per line, as written.
    #[must_use]
    pub fn describe(&self) -> String {
        self.rules.iter().map(|r| r.text.as_str()).collect::<Vec<_>>().join("; ")
    }
}

/// The longest the driver sleeps without reading the wall clock again: a
/// stepped clock (NTP, a resumed VM) moves a change by at most this much.
pub const RECHECK: Duration = Duration::from_secs(300);

/// Keeps `controls`' maintenance window in step with `windows` until
/// `shutdown`: sets it now, then sleeps until the next change (or at most
/// [`RECHECK`]) and sets it again. Logs each change with the rule that
/// decided it and sets the `{prefix}_maintenance_window_open` gauge.
pub async fn drive(
    windows: Windows,
    controls: Arc<Controls>,
    clock: Arc<dyn Clock>,
    gauge: metrics::Gauge,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut last: Option<bool> = None;
    loop {
        let now = to_jiff(clock.now());
        let verdict = windows.at(now);
        let open = verdict.open();
        controls.set_window_closed(!open);
        gauge.set(if open { 1.0 } else { 0.0 });
        let next = windows.next_change(now);
        if last != Some(open) {
            let next_text = next.map_or_else(|| "none within 8 days".to_owned(), |t| t.to_string());
            if open {
                tracing::info!(window = %verdict, next_change = %next_text, "maintenance window open: disruptive actions may start");
            } else {
                tracing::info!(window = %verdict, next_change = %next_text, "maintenance window closed: disruptive actions are held until it opens");
            }
            last = Some(open);
        }
        let wait = next.map_or(RECHECK, |t| {
            let ms = u64::try_from(t.as_millisecond().saturating_sub(now.as_millisecond())).unwrap_or(0);
            Duration::from_millis(ms).min(RECHECK)
        });
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The engine's timestamp as a jiff one.
#[must_use]
pub fn to_jiff(t: health_core::Timestamp) -> Timestamp {
    i64::try_from(t.as_millis()).ok().and_then(|ms| Timestamp::from_millisecond(ms).ok()).unwrap_or(Timestamp::MAX)
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
        assert_eq!(only_deny.at(ts("2026-12-08T10:00:00Z")), Verdict::OutsideDeny); // Tuesday
        assert_eq!(Verdict::OutsideDeny.to_string(), "outside every deny window");
        assert_eq!(Windows::default().at(ts("2026-12-08T10:00:00Z")), Verdict::NoRules);
    }

    /// (from, the next change) for a set of rules.
    fn changes(w: &Windows, cases: &[(&str, Option<&str>)]) {
        for (from, want) in cases {
            assert_eq!(w.next_change(ts(from)), want.map(ts), "next change after {from} ({})", w.describe());
        }
    }

    #[test]
    fn next_change_is_exact_across_dst_in_two_zones() {
        let berlin = Windows::parse(&[rule("allow", &["sun"], "01:30", "03:30", "Europe/Berlin")]).unwrap();
        changes(
            &berlin,
            &[
                // Spring (the window is 1 h): opens 01:30 CET, closes 03:30 CEST.
                ("2026-03-28T12:00:00Z", Some("2026-03-29T00:30:00Z")),
                ("2026-03-29T00:30:00Z", Some("2026-03-29T01:30:00Z")),
                // Autumn (3 h): opens 01:30 CEST, closes 03:30 CET.
                ("2026-10-24T12:00:00Z", Some("2026-10-24T23:30:00Z")),
                ("2026-10-24T23:30:00Z", Some("2026-10-25T02:30:00Z")),
                // Just after a close: the next Sunday.
                ("2026-10-25T02:30:00Z", Some("2026-11-01T00:30:00Z")),
            ],
        );
        // A window starting inside the skipped hour opens when the clocks
        // jump (03:00 CEST = 01:00Z); one ending inside the hour lived twice
        // closes at its first reading and opens again for the second.
        let gap = Windows::parse(&[rule("allow", &["sun"], "02:30", "04:00", "Europe/Berlin")]).unwrap();
        changes(&gap, &[("2026-03-28T23:00:00Z", Some("2026-03-29T01:00:00Z"))]);
        let fold = Windows::parse(&[rule("allow", &["sun"], "01:00", "02:30", "Europe/Berlin")]).unwrap();
        changes(
            &fold,
            &[
                ("2026-10-24T22:00:00Z", Some("2026-10-24T23:00:00Z")), // 01:00 CEST
                ("2026-10-24T23:00:00Z", Some("2026-10-25T00:30:00Z")), // 02:30 CEST
                ("2026-10-25T00:30:00Z", Some("2026-10-25T01:00:00Z")), // 02:00 CET again
                ("2026-10-25T01:00:00Z", Some("2026-10-25T01:30:00Z")), // 02:30 CET
            ],
        );
        let new_york = Windows::parse(&[rule("allow", &["sat"], "23:00", "04:00", "America/New_York")]).unwrap();
        changes(
            &new_york,
            &[
                ("2026-03-07T12:00:00Z", Some("2026-03-08T04:00:00Z")),
                ("2026-03-08T04:00:00Z", Some("2026-03-08T08:00:00Z")), // 04:00 EDT: 4 h
                ("2026-10-31T12:00:00Z", Some("2026-11-01T03:00:00Z")),
                ("2026-11-01T03:00:00Z", Some("2026-11-01T09:00:00Z")), // 04:00 EST: 6 h
            ],
        );
        // A deny rule inside an allow rule: both edges count.
        let both =
            Windows::parse(&[rule("allow", &[], "01:00", "05:00", "UTC"), rule("deny", &[], "02:00", "03:00", "UTC")])
                .unwrap();
        changes(
            &both,
            &[
                ("2026-12-07T01:30:00Z", Some("2026-12-07T02:00:00Z")),
                ("2026-12-07T02:00:00Z", Some("2026-12-07T03:00:00Z")),
                ("2026-12-07T03:00:00Z", Some("2026-12-07T05:00:00Z")),
            ],
        );
        // Nothing changes: no rules, or a deny rule covering every day.
        changes(&Windows::default(), &[("2026-12-07T00:00:00Z", None)]);
        let always = Windows::parse(&[rule("deny", &[], "00:00", "00:00", "UTC")]).unwrap();
        changes(&always, &[("2026-12-07T00:00:00Z", None)]);
    }

    #[tokio::test(start_paused = true)]
    async fn drive_sets_the_window_at_each_change_and_no_earlier() {
        use health_core::TokioClock;
        let windows = Windows::parse(&[rule("allow", &[], "02:00", "03:00", "UTC")]).unwrap();
        let controls = Arc::new(Controls::default());
        // 2026-12-07T01:30:00Z.
        let clock = Arc::new(TokioClock::starting_at(health_core::Timestamp::from_secs(1_796_607_000)));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(drive(windows, Arc::clone(&controls), clock, metrics::Gauge::noop(), async {
            let _ = stopped.await;
        }));
        let settle = || async {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        };
        settle().await;
        assert!(controls.window_closed(), "01:30: closed");
        tokio::time::advance(Duration::from_secs(30 * 60 - 1)).await;
        settle().await;
        assert!(controls.window_closed(), "01:59:59: still closed");
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert!(!controls.window_closed(), "02:00: open");
        tokio::time::advance(Duration::from_secs(60 * 60)).await;
        settle().await;
        assert!(controls.window_closed(), "03:00: closed again");
        stop.send(()).unwrap();
        task.await.unwrap();
    }

    /// A node for the engine: NotReady from the start.
    #[derive(Clone, Debug)]
    struct Down(String);

    impl health_core::Target for Down {
        fn name(&self) -> &str {
            &self.0
        }
        fn facts(&self) -> health_core::NodeFacts {
            health_core::NodeFacts::default()
        }
    }

    /// Records when each action was asked for.
    struct Calls(Arc<dyn Clock>, parking_lot::Mutex<Vec<(health_core::Action, health_core::Timestamp)>>);

    #[async_trait::async_trait]
    impl health_core::Executor<Down> for Calls {
        async fn execute(&self, action: health_core::Action, _: &Down) -> Result<(), health_core::ExecError> {
            self.1.lock().push((action, self.0.now()));
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_action_due_in_a_closed_window_starts_when_it_opens() {
        use health_core::{Action, CheckOutcome, Engine, FnChecker, MemoryStore, Policy, Runtime, TokioClock};
        // 01:30Z; the window opens at 02:00Z; the node's reboot is due at
        // 01:35 (NodeReady's 5-minute threshold).
        let t0 = health_core::Timestamp::from_secs(1_796_607_000);
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(t0));
        let calls = Arc::new(Calls(Arc::clone(&clock), parking_lot::Mutex::new(Vec::new())));
        let engine = Engine::builder(Arc::new(MemoryStore::new()), Arc::clone(&calls) as Arc<_>)
            .policy(Policy::default().with_monitor_only(false))
            .checker(FnChecker::new("NodeReady", Duration::from_secs(300), |_: &Down| {
                CheckOutcome::fail("KubeletNotReady")
            }))
            .clock(Arc::clone(&clock))
            .build()
            .unwrap();
        let windows = Windows::parse(&[rule("allow", &[], "02:00", "03:00", "UTC")]).unwrap();
        assert_eq!(windows.next_change(to_jiff(t0)), Some(ts("2026-12-07T02:00:00Z")), "the opening");
        let controls = engine.controls();
        tokio::spawn(drive(windows, controls, Arc::clone(&clock), metrics::Gauge::noop(), std::future::pending()));
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(health_core::TargetUpdate::Full(vec![Down("node-1".into())])).await.unwrap();
        let stopped = Runtime::new(engine)
            .run(health_core::runtime::updates_from(rx), tokio::time::sleep(Duration::from_secs(45 * 60)))
            .await;
        let calls = calls.1.lock().clone();
        // Held from 01:35 to 02:00, rebooted at the opening (not later), and
        // again a reboot wait (10m) after, the window being still open.
        assert_eq!(
            calls,
            [(Action::Reboot, t0 + Duration::from_secs(30 * 60)), (Action::Reboot, t0 + Duration::from_secs(40 * 60))]
        );
        assert_eq!(stopped.engine.record("node-1").map(|r| r.reboot_count), Some(2));
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
