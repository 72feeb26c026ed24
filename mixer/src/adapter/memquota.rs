//! `memquota`: quotas counted in memory, per distinct set of instance dimensions.
//!
//! Each quota (`quotas[].name` is the instance's full name) has a `maxAmount` per
//! `validDuration` (a rolling window, in 100 ms ticks), or, with no duration, a plain
//! allocation that is never replenished. The first override whose dimensions all equal the
//! instance's applies instead. Requests with the same deduplication id within
//! `minDeduplicationDuration` (default 1s) get the first answer again.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

use super::params::{self, bad};
use super::{AdapterError, Handler, InstanceValues, QuotaArgs, QuotaFuture, QuotaResult, Status};

const TICKS_PER_SECOND: u64 = 10;

/// A limit: how much per how long.
#[derive(Debug, Clone, PartialEq)]
struct Limit {
    max_amount: i64,
    valid_duration: Duration,
}

#[derive(Debug, Clone)]
struct Override {
    dimensions: BTreeMap<String, String>,
    limit: Limit,
}

#[derive(Debug, Clone)]
struct Quota {
    limit: Limit,
    overrides: Vec<Override>,
}

/// A window of `slots.len()` ticks.
#[derive(Debug)]
struct RollingWindow {
    max: i64,
    slots: Vec<i64>,
    total: i64,
    last_tick: u64,
}

#[derive(Debug, Default)]
struct State {
    cells: HashMap<String, i64>,
    windows: HashMap<String, RollingWindow>,
    dedup: HashMap<String, (Instant, i64, Duration)>,
    last_purge: Option<Instant>,
}

/// The memquota handler.
#[derive(Debug)]
pub struct MemQuota {
    quotas: HashMap<String, Quota>,
    dedup_window: Duration,
    start: Instant,
    state: Mutex<State>,
}

fn limit(p: &Value, field: &str) -> Result<Limit, AdapterError> {
    let max_amount = params::int(p, "maxAmount", &format!("{field}.maxAmount"))?.unwrap_or(0);
    if max_amount < 0 {
        return Err(bad(
            &format!("{field}.maxAmount"),
            format!("{max_amount} must be >= 0"),
        ));
    }
    let valid_duration = params::duration(p, "validDuration", &format!("{field}.validDuration"))?
        .unwrap_or_default();
    Ok(Limit {
        max_amount,
        valid_duration,
    })
}

// === impl RollingWindow ===

impl RollingWindow {
    fn new(max: i64, ticks: usize) -> Self {
        Self {
            max,
            slots: vec![0; ticks.max(1)],
            total: 0,
            last_tick: 0,
        }
    }

    fn advance(&mut self, tick: u64) {
        let n = self.slots.len() as u64;
        if tick <= self.last_tick {
            return;
        }
        if tick - self.last_tick >= n {
            self.slots.iter_mut().for_each(|s| *s = 0);
            self.total = 0;
        } else {
            for t in self.last_tick + 1..=tick {
                let slot = &mut self.slots[(t % n) as usize];
                self.total -= *slot;
                *slot = 0;
            }
        }
        self.last_tick = tick;
    }

    fn available(&mut self, tick: u64) -> i64 {
        self.advance(tick);
        (self.max - self.total).max(0)
    }

    fn alloc(&mut self, amount: i64, tick: u64) {
        self.advance(tick);
        let n = self.slots.len() as u64;
        self.slots[(tick % n) as usize] += amount;
        self.total += amount;
    }
}

// === impl MemQuota ===

impl MemQuota {
    /// Validates parameters and builds the handler.
    pub fn build(p: &Value) -> Result<Self, AdapterError> {
        params::only(p, "", &["quotas", "minDeduplicationDuration"])?;
        let dedup_window =
            params::duration(p, "minDeduplicationDuration", "minDeduplicationDuration")?
                .unwrap_or(Duration::from_secs(1));
        if dedup_window.is_zero() {
            return Err(bad(
                "minDeduplicationDuration",
                "deduplication window of 0s is invalid, must be > 0",
            ));
        }
        let mut quotas = HashMap::new();
        let list = match params::get(p, "quotas") {
            None | Some(Value::Null) => &Vec::new(),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(bad("quotas", "must be a list")),
        };
        for (i, q) in list.iter().enumerate() {
            let field = format!("quotas[{i}]");
            params::only(
                q,
                &format!("{field}."),
                &["name", "maxAmount", "validDuration", "overrides"],
            )?;
            let name = params::string(q, "name", &format!("{field}.name"))?
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    bad(
                        &format!("{field}.name"),
                        "a quota needs a name (the instance's full name)",
                    )
                })?;
            let base = limit(q, &field)?;
            let mut overrides = Vec::new();
            if let Some(Value::Array(os)) = params::get(q, "overrides") {
                for (j, o) in os.iter().enumerate() {
                    let ofield = format!("{field}.overrides[{j}]");
                    params::only(
                        o,
                        &format!("{ofield}."),
                        &["dimensions", "maxAmount", "validDuration"],
                    )?;
                    let mut dimensions = BTreeMap::new();
                    if let Some(Value::Object(d)) = params::get(o, "dimensions") {
                        for (k, v) in d {
                            let v = match v {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            dimensions.insert(k.clone(), v);
                        }
                    }
                    overrides.push(Override {
                        dimensions,
                        limit: limit(o, &ofield)?,
                    });
                }
            }
            if quotas
                .insert(
                    name.clone(),
                    Quota {
                        limit: base,
                        overrides,
                    },
                )
                .is_some()
            {
                return Err(bad(
                    &format!("{field}.name"),
                    format!("quota {name} is defined twice"),
                ));
            }
        }
        Ok(Self {
            quotas,
            dedup_window,
            start: Instant::now(),
            state: Mutex::new(State::default()),
        })
    }

    /// Allocates `args` for `instance`, now.
    pub fn allocate(&self, instance: &InstanceValues<'_>, args: &QuotaArgs<'_>) -> QuotaResult {
        // The instance's dimensions, as text, in name order.
        let mut dims: Vec<(&str, String)> = Vec::new();
        for (i, name) in instance.instance.fields.iter().enumerate() {
            if let Some(d) = name.strip_prefix("dimensions.") {
                let mut text = String::new();
                if let Some(Some(v)) = instance.values.get(i) {
                    v.write_text(&mut text);
                }
                dims.push((d, text));
            }
        }
        dims.sort();
        let limit = match self.quotas.get(&*instance.instance.name) {
            None => Limit {
                max_amount: 0,
                valid_duration: Duration::ZERO,
            },
            Some(q) => q
                .overrides
                .iter()
                .find(|o| {
                    o.dimensions
                        .iter()
                        .all(|(k, v)| dims.iter().any(|(dk, dv)| dk == k && dv == v))
                })
                .map(|o| o.limit.clone())
                .unwrap_or_else(|| q.limit.clone()),
        };
        let mut key = String::with_capacity(64);
        key.push_str(&instance.instance.name);
        for (k, v) in &dims {
            key.push(';');
            key.push_str(k);
            key.push('=');
            key.push_str(v);
        }
        let now = Instant::now();
        let tick = (now - self.start).as_millis() as u64 * TICKS_PER_SECOND / 1000;
        let mut state = self.state.lock();
        // Forget old deduplication ids now and then.
        if state.last_purge.is_none_or(|t| now - t > self.dedup_window) {
            let window = self.dedup_window;
            state.dedup.retain(|_, (t, _, _)| now - *t <= window);
            state.last_purge = Some(now);
        }
        if let Some((t, amount, valid)) = state.dedup.get(args.deduplication_id)
            && !args.deduplication_id.is_empty()
            && now - *t <= self.dedup_window
        {
            return QuotaResult {
                status: Status::default(),
                amount: *amount,
                valid_duration: *valid,
            };
        }
        let wanted = args.amount.max(0);
        let (amount, valid) = if limit.valid_duration.is_zero() {
            let in_use = state.cells.get(&key).copied().unwrap_or(0);
            let available = (limit.max_amount - in_use).max(0);
            let granted = if wanted <= available {
                wanted
            } else if args.best_effort {
                available
            } else {
                0
            };
            *state.cells.entry(key).or_default() += granted;
            (granted, Duration::ZERO)
        } else {
            let secs =
                limit.valid_duration.as_secs() + u64::from(limit.valid_duration.subsec_nanos() > 0);
            let ticks = (secs * TICKS_PER_SECOND) as usize;
            let window = state
                .windows
                .entry(key)
                .or_insert_with(|| RollingWindow::new(limit.max_amount, ticks));
            window.max = limit.max_amount;
            let available = window.available(tick);
            let granted = if wanted <= available {
                wanted
            } else if args.best_effort {
                available
            } else {
                0
            };
            window.alloc(granted, tick);
            (granted, limit.valid_duration)
        };
        if !args.deduplication_id.is_empty() {
            state
                .dedup
                .insert(args.deduplication_id.to_string(), (now, amount, valid));
        }
        QuotaResult {
            status: Status::default(),
            amount,
            valid_duration: valid,
        }
    }
}

impl Handler for MemQuota {
    /// Allocated in memory: the future is ready when returned.
    fn quota(&self, instance: &InstanceValues<'_>, args: &QuotaArgs<'_>) -> QuotaFuture<'_> {
        QuotaFuture::ready(self.allocate(instance, args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_window_replenishes() {
        let mut w = RollingWindow::new(5, 10);
        assert_eq!(w.available(0), 5);
        w.alloc(5, 0);
        assert_eq!(w.available(5), 0);
        assert_eq!(w.available(10), 5);
        w.alloc(3, 11);
        assert_eq!(w.available(12), 2);
        assert_eq!(w.available(100), 5);
    }

    #[test]
    fn validation_names_fields() {
        let e = MemQuota::build(&serde_json::json!({"quotas": [{"maxAmount": 1}]})).unwrap_err();
        assert_eq!(e.field, "quotas[0].name");
        let e = MemQuota::build(&serde_json::json!({"quotas": [{"name": "q", "maxAmount": -1}]}))
            .unwrap_err();
        assert_eq!(e.field, "quotas[0].maxAmount");
        let e = MemQuota::build(
            &serde_json::json!({"quotas": [{"name": "q", "overrides": [{"validDuration": "x"}]}]}),
        )
        .unwrap_err();
        assert_eq!(e.field, "quotas[0].overrides[0].validDuration");
        let e =
            MemQuota::build(&serde_json::json!({"minDeduplicationDuration": "0s"})).unwrap_err();
        assert_eq!(e.field, "minDeduplicationDuration");
    }
}
