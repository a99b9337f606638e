//! Per-agent baseline counts for R7: a rolling window of daily buckets per (agent, feature,
//! value), bounded in size.
//!
//! Every observed event (not only rule fires) is counted in memory; the counts are written to
//! the `baseline` table by [`crate::Store::roll_up`] (a timer) and on close, so a crash loses at
//! most one roll-up interval of counts — they are statistics, not evidence. Memory is bounded:
//! at most `max_values` distinct values per agent and feature (a new value evicts the least
//! seen one, and the evictions are counted), values longer than `max_value_len` bytes are cut,
//! and at most `max_agents` agents are tracked.

use std::collections::HashMap;

use oknek_event::{BaselineView, Event, Feature, Timestamp};
use rusqlite::{Connection, params};

const NANOS_PER_DAY: i64 = 86_400 * 1_000_000_000;
/// The window length; the issue fixes it at 14 days.
pub const WINDOW_DAYS: usize = 14;

#[derive(Debug, Clone)]
pub struct BaselineConfig {
    pub max_values: usize,
    pub max_value_len: usize,
    pub max_agents: usize,
}

impl Default for BaselineConfig {
    fn default() -> BaselineConfig {
        BaselineConfig {
            max_values: 4096,
            max_value_len: 256,
            max_agents: 1024,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Slots {
    /// Counts by `day mod WINDOW_DAYS`.
    days: [u32; WINDOW_DAYS],
    /// Ring slots changed since the last write to the database.
    dirty: u16,
}

impl Slots {
    fn total(&self) -> u64 {
        self.days.iter().map(|&c| u64::from(c)).sum()
    }
}

#[derive(Debug, Default)]
struct AgentBaseline {
    first_ns: i64,
    last_ns: i64,
    evictions: u64,
    dirty: bool,
    features: [HashMap<String, Slots>; Feature::ALL.len()],
}

/// The baseline store's in-memory side. Implements [`BaselineView`] for the rule engine.
#[derive(Debug)]
pub struct Baseline {
    cfg: BaselineConfig,
    /// The newest day (days since the epoch) the ring represents; `None` before any event.
    today: Option<i64>,
    agents: HashMap<String, AgentBaseline>,
    /// Values evicted or expired since the last write: their rows must go.
    removed: Vec<(String, Feature, String)>,
    dropped_agents: u64,
}

fn day_of(t: Timestamp) -> i64 {
    t.as_nanos().div_euclid(NANOS_PER_DAY)
}

fn slot(day: i64) -> usize {
    day.rem_euclid(WINDOW_DAYS as i64) as usize
}

fn feature_index(f: Feature) -> usize {
    Feature::ALL
        .iter()
        .position(|&x| x == f)
        .expect("every feature is in ALL")
}

impl Baseline {
    pub fn new(cfg: BaselineConfig) -> Baseline {
        Baseline {
            cfg,
            today: None,
            agents: HashMap::new(),
            removed: Vec::new(),
            dropped_agents: 0,
        }
    }

    fn cut<'a>(&self, value: &'a str) -> &'a str {
        if value.len() <= self.cfg.max_value_len {
            return value;
        }
        let mut end = self.cfg.max_value_len;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        &value[..end]
    }

    /// Counts one observed event.
    pub fn record(&mut self, event: &Event) {
        let Some(agent) = event.agent() else { return };
        let day = day_of(event.time);
        match self.today {
            Some(today) if day > today => self.advance(day),
            Some(today) if day <= today - WINDOW_DAYS as i64 => return,
            None => self.today = Some(day),
            _ => {}
        }
        if !self.agents.contains_key(agent) {
            if self.agents.len() >= self.cfg.max_agents {
                self.dropped_agents += 1;
                return;
            }
            self.agents.insert(
                agent.to_owned(),
                AgentBaseline {
                    first_ns: event.time.as_nanos(),
                    last_ns: event.time.as_nanos(),
                    ..AgentBaseline::default()
                },
            );
        }
        let max_values = self.cfg.max_values;
        let values: Vec<(Feature, String)> = Feature::ALL
            .into_iter()
            .filter(|f| f.applies_to(event.kind()))
            .filter_map(|f| event.feature_value(f).map(|v| (f, self.cut(&v).to_owned())))
            .collect();
        let a = self.agents.get_mut(agent).expect("inserted above");
        a.first_ns = a.first_ns.min(event.time.as_nanos());
        a.last_ns = a.last_ns.max(event.time.as_nanos());
        a.dirty = true;
        for (feature, value) in values {
            let table = &mut a.features[feature_index(feature)];
            if !table.contains_key(&value) && table.len() >= max_values {
                // Evict the least-seen value so a flood of new values cannot grow memory.
                if let Some(victim) = table
                    .iter()
                    .min_by_key(|(_, s)| s.total())
                    .map(|(k, _)| k.clone())
                {
                    table.remove(&victim);
                    self.removed.push((agent.to_owned(), feature, victim));
                    a.evictions += 1;
                }
            }
            let s = table.entry(value).or_default();
            let i = slot(day);
            s.days[i] = s.days[i].saturating_add(1);
            s.dirty |= 1 << i;
        }
    }

    /// Moves the window so that `day` is its newest day, clearing the days that fall out.
    fn advance(&mut self, day: i64) {
        let Some(today) = self.today else {
            self.today = Some(day);
            return;
        };
        if day <= today {
            return;
        }
        let steps = (day - today).min(WINDOW_DAYS as i64);
        for d in (day - steps + 1)..=day {
            let i = slot(d);
            for (name, a) in &mut self.agents {
                for (fi, table) in a.features.iter_mut().enumerate() {
                    table.retain(|value, s| {
                        s.days[i] = 0;
                        s.dirty &= !(1 << i);
                        let keep = s.days.iter().any(|&c| c > 0);
                        if !keep {
                            self.removed
                                .push((name.clone(), Feature::ALL[fi], value.clone()));
                        }
                        keep
                    });
                }
            }
        }
        self.today = Some(day);
    }

    /// First day still inside the window.
    fn window_start_ns(&self) -> Option<i64> {
        self.today
            .map(|t| (t - WINDOW_DAYS as i64 + 1).saturating_mul(NANOS_PER_DAY))
    }

    /// Evictions so far for an agent (values dropped because of `max_values`).
    pub fn evictions(&self, agent: &str) -> u64 {
        self.agents.get(agent).map_or(0, |a| a.evictions)
    }

    /// Events of agents not tracked because `max_agents` was reached.
    pub fn dropped_agents(&self) -> u64 {
        self.dropped_agents
    }

    /// Number of (agent, feature, value) entries held.
    pub fn len(&self) -> usize {
        self.agents
            .values()
            .flat_map(|a| a.features.iter())
            .map(HashMap::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves the window to `now` and writes changed counts to the database (in `conn`'s open
    /// transaction).
    pub(crate) fn persist(
        &mut self,
        conn: &Connection,
        now: Option<Timestamp>,
    ) -> rusqlite::Result<()> {
        if let Some(now) = now {
            self.advance(day_of(now));
        }
        let Some(today) = self.today else {
            return Ok(());
        };
        let start = today - WINDOW_DAYS as i64 + 1;
        conn.prepare_cached("DELETE FROM baseline WHERE day < ?1")?
            .execute([start])?;
        {
            let mut del = conn.prepare_cached(
                "DELETE FROM baseline WHERE agent = ?1 AND feature = ?2 AND value = ?3",
            )?;
            for (agent, f, value) in self.removed.drain(..) {
                del.execute(params![agent, f.name(), value])?;
            }
        }
        let mut up = conn.prepare_cached(
            "INSERT INTO baseline (agent, feature, value, day, count) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (agent, feature, value, day) DO UPDATE SET count = excluded.count",
        )?;
        let mut up_agent = conn.prepare_cached(
            "INSERT OR REPLACE INTO baseline_agents (agent, first_ns, last_ns, evictions)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (name, a) in &mut self.agents {
            if !a.dirty {
                continue;
            }
            for (fi, table) in a.features.iter_mut().enumerate() {
                for (value, s) in table.iter_mut() {
                    while s.dirty != 0 {
                        let i = s.dirty.trailing_zeros() as usize;
                        s.dirty &= !(1 << i);
                        // The one day in the window that maps to slot i.
                        let day = today - (today - i as i64).rem_euclid(WINDOW_DAYS as i64);
                        up.execute(params![
                            name,
                            Feature::ALL[fi].name(),
                            value,
                            day,
                            s.days[i]
                        ])?;
                    }
                }
            }
            up_agent.execute(params![name, a.first_ns, a.last_ns, a.evictions as i64])?;
            a.dirty = false;
        }
        Ok(())
    }

    /// Loads the counts saved by [`Self::persist`].
    pub(crate) fn load(cfg: BaselineConfig, conn: &Connection) -> rusqlite::Result<Baseline> {
        let mut b = Baseline::new(cfg);
        let today: Option<i64> =
            conn.query_row("SELECT max(day) FROM baseline", [], |r| r.get(0))?;
        let Some(today) = today else {
            return Ok(b);
        };
        b.today = Some(today);
        let start = today - WINDOW_DAYS as i64 + 1;
        let mut agents =
            conn.prepare("SELECT agent, first_ns, last_ns, evictions FROM baseline_agents")?;
        let rows = agents.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (name, first_ns, last_ns, ev) = row?;
            if b.agents.len() < b.cfg.max_agents {
                b.agents.insert(
                    name,
                    AgentBaseline {
                        first_ns,
                        last_ns,
                        evictions: ev.max(0) as u64,
                        ..AgentBaseline::default()
                    },
                );
            }
        }
        let mut counts = conn.prepare(
            "SELECT agent, feature, value, day, count FROM baseline WHERE day >= ?1 AND day <= ?2",
        )?;
        let rows = counts.query_map([start, today], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let max_values = b.cfg.max_values;
        for row in rows {
            let (agent, feature, value, day, count) = row?;
            let (Some(f), Some(a)) = (Feature::from_name(&feature), b.agents.get_mut(&agent))
            else {
                continue;
            };
            let table = &mut a.features[feature_index(f)];
            if !table.contains_key(&value) && table.len() >= max_values {
                continue;
            }
            table.entry(value).or_default().days[slot(day)] =
                u32::try_from(count.max(0)).unwrap_or(u32::MAX);
        }
        Ok(b)
    }
}

impl BaselineView for Baseline {
    fn history_since(&self, agent: &str) -> Option<Timestamp> {
        let a = self.agents.get(agent)?;
        let start = self.window_start_ns()?;
        if a.last_ns < start {
            return None;
        }
        Some(Timestamp(a.first_ns.max(start)))
    }

    fn seen_count(&self, agent: &str, feature: Feature, value: &str) -> u64 {
        self.agents
            .get(agent)
            .and_then(|a| a.features[feature_index(feature)].get(self.cut(value)))
            .map_or(0, Slots::total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(agent: &str, time: &str, path: &str) -> Event {
        Event::from_json(&format!(
            r#"{{"time":"{time}","source":"recorded","process":{{"pid":7,"uid":1000,"agent":"{agent}"}},
               "kind":"exec","path":"{path}"}}"#
        ))
        .unwrap()
    }

    #[test]
    fn counts_roll_off_after_the_window() {
        let mut b = Baseline::new(BaselineConfig::default());
        b.record(&exec("aider", "2026-11-01T10:00:00Z", "/usr/bin/git"));
        b.record(&exec("aider", "2026-11-02T10:00:00Z", "/usr/bin/git"));
        b.record(&exec("aider", "2026-11-02T11:00:00Z", "/usr/bin/cargo"));
        assert_eq!(b.seen_count("aider", Feature::ExecBasename, "git"), 2);
        assert_eq!(
            b.history_since("aider"),
            Some("2026-11-01T10:00:00Z".parse().unwrap())
        );
        // 14 days after Nov 1 the first day has left the window.
        b.record(&exec("aider", "2026-11-15T09:00:00Z", "/usr/bin/ls"));
        assert_eq!(b.seen_count("aider", Feature::ExecBasename, "git"), 1);
        assert_eq!(
            b.history_since("aider"),
            Some("2026-11-02T00:00:00Z".parse().unwrap())
        );
        // Far in the future everything has expired and the agent warms up again.
        b.advance(day_of("2026-12-31T00:00:00Z".parse().unwrap()));
        assert_eq!(b.seen_count("aider", Feature::ExecBasename, "ls"), 0);
        assert_eq!(b.history_since("aider"), None);
        assert!(b.is_empty());
        assert_eq!(b.seen_count("nobody", Feature::Model, "x"), 0);
    }

    #[test]
    fn distinct_values_are_capped() {
        let mut b = Baseline::new(BaselineConfig {
            max_values: 8,
            max_value_len: 16,
            max_agents: 2,
        });
        for _ in 0..5 {
            b.record(&exec("a", "2026-11-01T10:00:00Z", "/usr/bin/git"));
        }
        for i in 0..1000 {
            b.record(&exec("a", "2026-11-01T10:00:00Z", &format!("/tmp/x{i}")));
        }
        assert_eq!(b.len(), 8);
        assert_eq!(
            b.seen_count("a", Feature::ExecBasename, "git"),
            5,
            "frequent value kept"
        );
        assert_eq!(b.evictions("a"), 1000 - 7);
        let long = format!("/bin/{}", "y".repeat(100));
        b.record(&exec("a", "2026-11-01T10:00:00Z", &long));
        assert_eq!(
            b.seen_count("a", Feature::ExecBasename, &"y".repeat(100)),
            1
        );
        b.record(&exec("b", "2026-11-01T10:00:00Z", "/bin/true"));
        b.record(&exec("c", "2026-11-01T10:00:00Z", "/bin/true"));
        assert_eq!(b.dropped_agents(), 1);
    }

    #[test]
    fn persists_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::db::open_rw(&dir.path().join("b.db")).unwrap();
        let mut b = Baseline::new(BaselineConfig::default());
        b.record(&exec("aider", "2026-11-01T10:00:00Z", "/usr/bin/git"));
        b.record(&exec("aider", "2026-11-03T10:00:00Z", "/usr/bin/git"));
        b.persist(&conn, None).unwrap();
        b.record(&exec("aider", "2026-11-03T11:00:00Z", "/usr/bin/git"));
        b.persist(&conn, Some("2026-11-05T00:00:00Z".parse().unwrap()))
            .unwrap();
        let again = Baseline::load(BaselineConfig::default(), &conn).unwrap();
        assert_eq!(again.seen_count("aider", Feature::ExecBasename, "git"), 3);
        assert_eq!(again.history_since("aider"), b.history_since("aider"));
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM baseline", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2);
        // Rolling past the window deletes the rows.
        let mut b = again;
        b.persist(&conn, Some("2026-12-01T00:00:00Z".parse().unwrap()))
            .unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM baseline", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0);
    }
}
