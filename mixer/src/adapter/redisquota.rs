//! `redisquota`: rate-limit quotas kept in Redis, so every Mixer replica shares them.
//!
//! Parameters (Istio's): `redisServerUrl` (`host:port`, or a `redis://` / `unix://` URL),
//! `connectionPoolSize`, and `quotas[]`: `name` (the quota instance's full name),
//! `maxAmount`, `validDuration`, `bucketDuration`, `rateLimitAlgorithm` (`FIXED_WINDOW`, the
//! default, or `ROLLING_WINDOW`) and `overrides[]` (`dimensions`, `maxAmount`; the first
//! override whose dimensions all equal the instance's applies). Validation follows Istio:
//! at least one quota, `validDuration > 0`, and for `ROLLING_WINDOW`
//! `0 < bucketDuration < validDuration`; overrides need dimensions and `maxAmount > 0`.
//!
//! Each allocation is one server-side Lua script (atomic in Redis):
//! - `FIXED_WINDOW`: a counter that starts over `validDuration` after its first use.
//! - `ROLLING_WINDOW`: amounts are counted per `bucketDuration` bucket, and a bucket counts
//!   until `validDuration` has passed since its end, so no `validDuration`-long span ever
//!   grants more than `maxAmount`.
//!
//! Keys are `redisquota:fixed:<quota>;<dimension>=<value>...` and
//! `redisquota:rolling:<bucket ms>:<quota>;...` (dimensions in name order), each expiring
//! with its window; a deduplication record is the key plus `;dedup=<id>`.
//!
//! Times are the Redis server's clock (`TIME`), so Mixer replicas need no synchronized
//! clocks. A request's deduplication id is remembered with its answer until the window it
//! was granted in ends, so a retried request is not charged twice.
//!
//! A quota request is a future on the caller's runtime, holding no worker while Redis
//! answers. Requests share `connectionPoolSize` connections (one by default), used in turn;
//! each is multiplexed: the commands of concurrent requests go out together on its socket
//! (pipelined) and their replies are matched in order. Both scripts are loaded when a
//! connection opens and run by hash (`EVALSHA`; on `NOSCRIPT`, after Redis restarted or
//! flushed its scripts, the script is loaded again). A request waits at most
//! [`REDIS_TIMEOUT`], connecting included, and at most [`MAX_IN_FLIGHT`] wait at once.
//!
//! As Istio's adapter does, a request Redis does not answer (unreachable, timed out, the
//! script failed) is answered UNAVAILABLE, nothing granted (Envoy answers 503), with the
//! reason; an answer that is not the script's is INTERNAL. A broken connection is dropped
//! and opened again by the next request; connection attempts are retried at most every
//! [`RECONNECT_BACKOFF`], failing fast in between.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use serde_json::Value;

use super::params::{self, bad};
use super::{
    AdapterEnv, AdapterError, Handler, InstanceValues, QuotaArgs, QuotaFuture, QuotaResult, Status,
    code,
};

/// The longest a quota request waits for Redis (connecting included).
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed connection attempt, requests fail at once for this long.
pub const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
/// How many quota requests may wait for Redis at once before new ones are refused (Busy).
pub const MAX_IN_FLIGHT: usize = 4096;
/// The most connections `connectionPoolSize` opens (each carries many requests at once).
const MAX_CONNECTIONS: usize = 64;

const ALGORITHMS: &[&str] = &["FIXED_WINDOW", "ROLLING_WINDOW"];

/// KEYS[1]: the window's hash (`n`: amount granted, `reset`: when the window ends, in ms).
/// KEYS[2] (optional): the request's deduplication record.
/// ARGV: maxAmount, window ms, bucket ms (unused), amount, best effort (0 or 1).
/// Returns {granted, ms the grant stays valid}.
const FIXED_WINDOW_SCRIPT: &str = r"
local max = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local amount = tonumber(ARGV[4])
local best_effort = ARGV[5] == '1'
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

if KEYS[2] then
  local seen = redis.call('HMGET', KEYS[2], 'granted', 'until')
  local granted, valid_until = tonumber(seen[1]), tonumber(seen[2])
  if granted and valid_until and valid_until > now then
    return {granted, valid_until - now}
  end
end

local state = redis.call('HMGET', KEYS[1], 'n', 'reset')
local used, reset = tonumber(state[1]), tonumber(state[2])
if not used or not reset or now >= reset then
  used = 0
  reset = now + window
  redis.call('HSET', KEYS[1], 'n', 0, 'reset', reset)
  redis.call('PEXPIREAT', KEYS[1], reset)
end

local granted = 0
if used + amount <= max then
  granted = amount
elseif best_effort and used < max then
  granted = max - used
end
if granted <= 0 then
  return {0, 0}
end
redis.call('HINCRBY', KEYS[1], 'n', granted)
if KEYS[2] then
  redis.call('HSET', KEYS[2], 'granted', granted, 'until', reset)
  redis.call('PEXPIREAT', KEYS[2], reset)
end
return {granted, reset - now}
";

/// KEYS[1]: a hash of bucket number (server time / bucket ms) to the amount granted in it,
/// plus `total` (the sum over the buckets still counting) and `oldest` (no bucket before it).
/// KEYS[2] (optional): the request's deduplication record.
/// ARGV: maxAmount, window ms, bucket ms, amount, best effort (0 or 1).
/// A bucket counts while its end plus the window is still ahead; buckets that stopped
/// counting are dropped, each once, so a call costs O(1) amortized. Returns {granted, ms}.
const ROLLING_WINDOW_SCRIPT: &str = r"
local max = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local bucket = tonumber(ARGV[3])
local amount = tonumber(ARGV[4])
local best_effort = ARGV[5] == '1'
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

if KEYS[2] then
  local seen = redis.call('HMGET', KEYS[2], 'granted', 'until')
  local granted, valid_until = tonumber(seen[1]), tonumber(seen[2])
  if granted and valid_until and valid_until > now then
    return {granted, valid_until - now}
  end
end

-- Bucket b counts while (b + 1) * bucket + window > now.
local first_live = math.floor((now - window) / bucket)
local meta = redis.call('HMGET', KEYS[1], 'total', 'oldest')
local used = tonumber(meta[1]) or 0
local oldest = tonumber(meta[2]) or first_live
if oldest < first_live then
  if first_live - oldest <= redis.call('HLEN', KEYS[1]) then
    for b = oldest, first_live - 1 do
      local field = string.format('%d', b)
      local n = tonumber(redis.call('HGET', KEYS[1], field))
      if n then
        used = used - n
        redis.call('HDEL', KEYS[1], field)
      end
    end
  else
    -- Fewer buckets than bucket numbers passed: look at the buckets instead.
    for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
      local b = tonumber(field)
      if b and b < first_live then
        used = used - (tonumber(redis.call('HGET', KEYS[1], field)) or 0)
        redis.call('HDEL', KEYS[1], field)
      end
    end
  end
  if used < 0 then
    used = 0
  end
end

local granted = 0
if used + amount <= max then
  granted = amount
elseif best_effort and used < max then
  granted = max - used
end
if granted > 0 then
  local current = string.format('%d', math.floor(now / bucket))
  redis.call('HINCRBY', KEYS[1], current, granted)
end
redis.call('HSET', KEYS[1], 'total', used + granted, 'oldest', string.format('%d', first_live))
redis.call('PEXPIRE', KEYS[1], window + bucket)
if granted <= 0 then
  return {0, 0}
end
if KEYS[2] then
  redis.call('HSET', KEYS[2], 'granted', granted, 'until', now + window)
  redis.call('PEXPIRE', KEYS[2], window)
end
return {granted, window}
";

/// Why Redis did not answer a quota request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisQuotaError {
    #[error("redis at {addr} is unreachable: {message}")]
    Connect { addr: String, message: String },
    #[error("redis at {addr} failed the quota script: {message}")]
    Script { addr: String, message: String },
    #[error("redis at {addr} answered the quota script with {message}")]
    Reply { addr: String, message: String },
    #[error("redis at {addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("too many quota requests are waiting for redis at {addr}")]
    Busy { addr: String },
    #[error("the quota request for redis at {addr} was made outside a tokio runtime")]
    NoRuntime { addr: String },
    #[error("the redis client is not running (configuration is only being validated)")]
    NotStarted,
}

/// How a quota's window moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    FixedWindow,
    RollingWindow,
}

#[derive(Debug, Clone)]
struct Override {
    dimensions: BTreeMap<String, String>,
    max_amount: i64,
}

#[derive(Debug, Clone)]
struct Quota {
    max_amount: i64,
    valid_duration: Duration,
    bucket_duration: Duration,
    algorithm: Algorithm,
    overrides: Vec<Override>,
}

/// One allocation: what the script is given.
#[derive(Debug)]
struct Job {
    algorithm: Algorithm,
    key: String,
    dedup_key: Option<String>,
    max_amount: i64,
    window_ms: u64,
    bucket_ms: u64,
    amount: i64,
    best_effort: bool,
}

/// One connection of the pool: the live one (with the number of its connect, so a failure
/// seen on an old one does not drop its replacement), and a lock that lets a single request
/// connect while the others wait for it.
#[derive(Default)]
struct Slot {
    live: Mutex<Option<(u64, MultiplexedConnection)>>,
    connecting: tokio::sync::Mutex<()>,
}

/// The Redis side: connections (opened lazily, used round-robin, each carrying every request
/// sent on it at once) and the scripts.
struct Client {
    addr: String,
    client: redis::Client,
    slots: Vec<Slot>,
    next: AtomicUsize,
    connects: AtomicU64,
    /// Quota requests sent and not answered yet.
    in_flight: AtomicUsize,
    /// The last failed connection attempt: when, and why.
    down: Mutex<Option<(Instant, String)>>,
    fixed: redis::Script,
    rolling: redis::Script,
}

/// Counts a request in flight until dropped.
struct InFlight(Arc<Client>);

/// The redisquota handler.
#[derive(Debug)]
pub struct RedisQuota {
    addr: String,
    quotas: HashMap<String, Quota>,
    /// The Redis client (none when only validating).
    client: Option<Arc<Client>>,
    last_warning: Mutex<Option<Instant>>,
}

fn duration_ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

// === impl RedisQuota ===

impl RedisQuota {
    /// Validates parameters and builds the handler (outside validation, with its client).
    /// Redis need not be up: requests fail UNAVAILABLE until it is.
    pub fn build(p: &Value, env: &AdapterEnv) -> Result<Self, AdapterError> {
        params::only(p, "", &["redisServerUrl", "connectionPoolSize", "quotas"])?;
        let url = params::string(p, "redisServerUrl", "redisServerUrl")?
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                bad(
                    "redisServerUrl",
                    "redis_server_url should not be empty (e.g. localhost:6379)",
                )
            })?;
        let full_url = if url.contains("://") {
            url.clone()
        } else {
            format!("redis://{url}")
        };
        let client = redis::Client::open(full_url.as_str())
            .map_err(|e| bad("redisServerUrl", format!("{url}: {e}")))?;
        // Where Redis is, for messages: `host:port`, without any credentials of the URL.
        let addr = client.get_connection_info().addr().to_string();
        let pool = params::int(p, "connectionPoolSize", "connectionPoolSize")?.unwrap_or(0);
        if pool < 0 {
            return Err(bad(
                "connectionPoolSize",
                format!("connection_pool_size of {pool} is invalid, must be > 0"),
            ));
        }
        let connections = (pool as usize).clamp(1, MAX_CONNECTIONS);
        let quotas = quotas(p)?;
        let client = env.start_tasks.then(|| {
            Arc::new(Client {
                addr: addr.clone(),
                client,
                slots: (0..connections).map(|_| Slot::default()).collect(),
                next: AtomicUsize::new(0),
                connects: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                down: Mutex::new(None),
                fixed: redis::Script::new(FIXED_WINDOW_SCRIPT),
                rolling: redis::Script::new(ROLLING_WINDOW_SCRIPT),
            })
        });
        Ok(Self {
            addr,
            quotas,
            client,
            last_warning: Mutex::new(None),
        })
    }

    /// Logs a failure, at most once every 10 seconds.
    fn warn(&self, e: &RedisQuotaError) {
        let mut last = self.last_warning.lock();
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(error = %e, "redisquota: quota requests fail");
        }
    }

    /// The answer for an allocation that did not happen.
    fn failed(&self, e: &RedisQuotaError) -> QuotaResult {
        self.warn(e);
        let status = match e {
            RedisQuotaError::Reply { .. } => code::INTERNAL,
            _ => code::UNAVAILABLE,
        };
        QuotaResult {
            status: Status::new(status, format!("redisquota: {e}")),
            amount: 0,
            valid_duration: Duration::ZERO,
        }
    }
}

fn quotas(p: &Value) -> Result<HashMap<String, Quota>, AdapterError> {
    let list = match params::get(p, "quotas") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        None | Some(Value::Null) | Some(Value::Array(_)) => {
            return Err(bad("quotas", "quota should not be empty"));
        }
        Some(_) => return Err(bad("quotas", "must be a list")),
    };
    let mut out = HashMap::new();
    for (i, q) in list.iter().enumerate() {
        let field = format!("quotas[{i}]");
        params::only(
            q,
            &format!("{field}."),
            &[
                "name",
                "maxAmount",
                "validDuration",
                "bucketDuration",
                "rateLimitAlgorithm",
                "overrides",
            ],
        )?;
        let name = params::string(q, "name", &format!("{field}.name"))?
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                bad(
                    &format!("{field}.name"),
                    "quotas.name should not be empty (the quota instance's full name)",
                )
            })?;
        let max_amount = params::int(q, "maxAmount", &format!("{field}.maxAmount"))?.unwrap_or(0);
        if max_amount < 0 {
            return Err(bad(
                &format!("{field}.maxAmount"),
                format!("{max_amount} must be >= 0"),
            ));
        }
        let valid_duration =
            params::duration(q, "validDuration", &format!("{field}.validDuration"))?
                .unwrap_or_default();
        if valid_duration < Duration::from_millis(1) {
            return Err(bad(
                &format!("{field}.validDuration"),
                "quotas.valid_duration should be > 0 (at least 1ms: Redis counts milliseconds)",
            ));
        }
        let bucket_duration =
            params::duration(q, "bucketDuration", &format!("{field}.bucketDuration"))?
                .unwrap_or_default();
        let algorithm = match params::enumeration(
            q,
            "rateLimitAlgorithm",
            &format!("{field}.rateLimitAlgorithm"),
            ALGORITHMS,
        )? {
            None | Some(0) => Algorithm::FixedWindow,
            _ => Algorithm::RollingWindow,
        };
        if algorithm == Algorithm::RollingWindow {
            if bucket_duration < Duration::from_millis(1) {
                return Err(bad(
                    &format!("{field}.bucketDuration"),
                    "quotas.bucket_duration should be > 0 (at least 1ms) for ROLLING_WINDOW algorithm",
                ));
            }
            if valid_duration <= bucket_duration {
                return Err(bad(
                    &format!("{field}.validDuration"),
                    format!(
                        "quotas.valid_duration: {valid_duration:?} should be longer than quotas.bucket_duration: {bucket_duration:?} for ROLLING_WINDOW algorithm"
                    ),
                ));
            }
        }
        let mut overrides = Vec::new();
        match params::get(q, "overrides") {
            None | Some(Value::Null) => {}
            Some(Value::Array(os)) => {
                for (j, o) in os.iter().enumerate() {
                    let ofield = format!("{field}.overrides[{j}]");
                    params::only(o, &format!("{ofield}."), &["dimensions", "maxAmount"])?;
                    let max_amount =
                        params::int(o, "maxAmount", &format!("{ofield}.maxAmount"))?.unwrap_or(0);
                    if max_amount <= 0 {
                        return Err(bad(
                            &format!("{ofield}.maxAmount"),
                            "quotas.overrides.max_amount must be > 0",
                        ));
                    }
                    let mut dimensions = BTreeMap::new();
                    match params::get(o, "dimensions") {
                        Some(Value::Object(d)) => {
                            for (k, v) in d {
                                let v = match v {
                                    Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                };
                                dimensions.insert(k.clone(), v);
                            }
                        }
                        None | Some(Value::Null) => {}
                        Some(_) => {
                            return Err(bad(&format!("{ofield}.dimensions"), "must be a mapping"));
                        }
                    }
                    if dimensions.is_empty() {
                        return Err(bad(
                            &format!("{ofield}.dimensions"),
                            "quotas.overrides.dimensions is empty",
                        ));
                    }
                    overrides.push(Override {
                        dimensions,
                        max_amount,
                    });
                }
            }
            Some(_) => return Err(bad(&format!("{field}.overrides"), "must be a list")),
        }
        let quota = Quota {
            max_amount,
            valid_duration,
            bucket_duration,
            algorithm,
            overrides,
        };
        if out.insert(name.clone(), quota).is_some() {
            return Err(bad(
                &format!("{field}.name"),
                format!("quota {name} is defined twice"),
            ));
        }
    }
    Ok(out)
}

impl Handler for RedisQuota {
    fn quota(&self, instance: &InstanceValues<'_>, args: &QuotaArgs<'_>) -> QuotaFuture<'_> {
        let granted = |amount: i64, valid: Duration| QuotaResult {
            status: Status::default(),
            amount,
            valid_duration: valid,
        };
        let Some(quota) = self.quotas.get(&*instance.instance.name) else {
            // As in Istio (which refuses such config): nothing is granted.
            tracing::debug!(instance = %instance.instance.name, "redisquota: no quota configured for this instance");
            return QuotaFuture::ready(granted(0, Duration::ZERO));
        };
        if args.amount <= 0 {
            return QuotaFuture::ready(granted(0, Duration::ZERO));
        }
        let Some(client) = &self.client else {
            return QuotaFuture::ready(self.failed(&RedisQuotaError::NotStarted));
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return QuotaFuture::ready(self.failed(&RedisQuotaError::NoRuntime {
                addr: self.addr.clone(),
            }));
        }
        let Some(in_flight) = client.admit() else {
            return QuotaFuture::ready(self.failed(&RedisQuotaError::Busy {
                addr: self.addr.clone(),
            }));
        };
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
        let max_amount = quota
            .overrides
            .iter()
            .find(|o| {
                o.dimensions
                    .iter()
                    .all(|(k, v)| dims.iter().any(|(dk, dv)| dk == k && dv == v))
            })
            .map_or(quota.max_amount, |o| o.max_amount);
        let mut key = match quota.algorithm {
            Algorithm::FixedWindow => "redisquota:fixed:".to_string(),
            Algorithm::RollingWindow => {
                format!("redisquota:rolling:{}:", duration_ms(quota.bucket_duration))
            }
        };
        key.push_str(&instance.instance.name);
        for (k, v) in &dims {
            key.push(';');
            key.push_str(k);
            key.push('=');
            key.push_str(v);
        }
        let dedup_key = (!args.deduplication_id.is_empty())
            .then(|| format!("{key};dedup={}", args.deduplication_id));
        let job = Job {
            algorithm: quota.algorithm,
            key,
            dedup_key,
            max_amount,
            window_ms: duration_ms(quota.valid_duration),
            bucket_ms: duration_ms(quota.bucket_duration),
            amount: args.amount,
            best_effort: args.best_effort,
        };
        let quota_name = instance.instance.short_name.clone();
        QuotaFuture::pending(async move {
            let answer = tokio::time::timeout(REDIS_TIMEOUT, in_flight.0.run(&job))
                .await
                .unwrap_or_else(|_| {
                    Err(RedisQuotaError::Timeout {
                        addr: self.addr.clone(),
                        timeout: REDIS_TIMEOUT,
                    })
                });
            drop(in_flight);
            match answer {
                Ok((amount, _)) if amount <= 0 => QuotaResult {
                    status: Status::new(
                        code::RESOURCE_EXHAUSTED,
                        format!("redisquota: quota {quota_name} is exhausted"),
                    ),
                    amount: 0,
                    valid_duration: Duration::ZERO,
                },
                Ok((amount, valid_ms)) => {
                    granted(amount, Duration::from_millis(valid_ms.max(0) as u64))
                }
                Err(e) => self.failed(&e),
            }
        })
    }
}

// === impl Client ===

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("connections", &self.slots.len())
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Counts a new request in flight, unless [`MAX_IN_FLIGHT`] are already.
    fn admit(self: &Arc<Self>) -> Option<InFlight> {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(InFlight(self.clone()))
    }

    /// A connection of slot `i` (with its connect number), connecting it if needed.
    async fn connection(&self, i: usize) -> Result<(u64, MultiplexedConnection), RedisQuotaError> {
        let slot = &self.slots[i];
        if let Some(live) = slot.live.lock().clone() {
            return Ok(live);
        }
        let _connecting = slot.connecting.lock().await;
        // Another request may have connected it meanwhile.
        if let Some(live) = slot.live.lock().clone() {
            return Ok(live);
        }
        if let Some((at, message)) = self.down.lock().as_ref()
            && at.elapsed() < RECONNECT_BACKOFF
        {
            return Err(RedisQuotaError::Connect {
                addr: self.addr.clone(),
                message: message.clone(),
            });
        }
        match self.connect().await {
            Ok(c) => {
                *self.down.lock() = None;
                let number = self.connects.fetch_add(1, Ordering::Relaxed);
                *slot.live.lock() = Some((number, c.clone()));
                Ok((number, c))
            }
            Err(e) => {
                let message = e.to_string();
                *self.down.lock() = Some((Instant::now(), message.clone()));
                Err(RedisQuotaError::Connect {
                    addr: self.addr.clone(),
                    message,
                })
            }
        }
    }

    /// Opens a connection and loads both scripts on it (Redis keeps them for every
    /// connection until it restarts; a request that finds them gone loads them again).
    async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let mut c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        self.fixed.load_async(&mut c).await?;
        self.rolling.load_async(&mut c).await?;
        Ok(c)
    }

    /// Runs one allocation script (EVALSHA; on NOSCRIPT, the script is loaded and run again).
    async fn run(&self, job: &Job) -> Result<(i64, i64), RedisQuotaError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let (number, mut con) = self.connection(i).await?;
        let script = match job.algorithm {
            Algorithm::FixedWindow => &self.fixed,
            Algorithm::RollingWindow => &self.rolling,
        };
        let mut invocation = script.key(&job.key);
        if let Some(d) = &job.dedup_key {
            invocation.key(d);
        }
        invocation
            .arg(job.max_amount)
            .arg(job.window_ms)
            .arg(job.bucket_ms)
            .arg(job.amount)
            .arg(u8::from(job.best_effort));
        match invocation.invoke_async::<(i64, i64)>(&mut con).await {
            Ok(answer) => Ok(answer),
            Err(e) if e.kind() == redis::ErrorKind::UnexpectedReturnType => {
                Err(RedisQuotaError::Reply {
                    addr: self.addr.clone(),
                    message: e.to_string(),
                })
            }
            Err(e) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
                {
                    // Reconnect on the next use of this slot (unless that happened already).
                    let mut live = self.slots[i].live.lock();
                    if live.as_ref().is_some_and(|(n, _)| *n == number) {
                        *live = None;
                    }
                }
                Err(RedisQuotaError::Script {
                    addr: self.addr.clone(),
                    message: e.to_string(),
                })
            }
        }
    }
}

// === impl InFlight ===

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env() -> AdapterEnv {
        AdapterEnv {
            prometheus: Default::default(),
            start_tasks: false,
            shutdown: Default::default(),
        }
    }

    fn build(p: Value) -> Result<RedisQuota, AdapterError> {
        RedisQuota::build(&p, &env())
    }

    fn quota(extra: Value) -> Value {
        let mut q = json!({"name": "requestcount.quota.istio-system", "maxAmount": 5, "validDuration": "10s"});
        for (k, v) in extra.as_object().unwrap() {
            q[k] = v.clone();
        }
        json!({"redisServerUrl": "localhost:6379", "quotas": [q]})
    }

    #[test]
    fn valid_config_is_accepted() {
        let h = build(quota(json!({
            "rateLimitAlgorithm": "ROLLING_WINDOW",
            "bucketDuration": "500ms",
            "overrides": [{"dimensions": {"destination": "reviews"}, "maxAmount": 1}],
        })))
        .unwrap();
        let q = &h.quotas["requestcount.quota.istio-system"];
        assert_eq!(q.algorithm, Algorithm::RollingWindow);
        assert_eq!(q.bucket_duration, Duration::from_millis(500));
        assert_eq!(q.overrides[0].max_amount, 1);
        // snake_case works too, and FIXED_WINDOW is the default.
        let h = build(
            json!({"redis_server_url": "redis://127.0.0.1:1/", "connection_pool_size": 3,
            "quotas": [{"name": "q", "max_amount": 1, "valid_duration": "1s"}]}),
        )
        .unwrap();
        assert_eq!(h.quotas["q"].algorithm, Algorithm::FixedWindow);
        // Messages name where Redis is, never the URL's credentials.
        let h = build(json!({"redisServerUrl": "redis://:s3cret@127.0.0.1:7000/2",
            "quotas": [{"name": "q", "maxAmount": 1, "validDuration": "1s"}]}))
        .unwrap();
        assert_eq!(h.addr, "127.0.0.1:7000");
    }

    #[test]
    fn validation_follows_istio_and_names_fields() {
        let field = |p: Value| build(p).unwrap_err().field;
        assert_eq!(
            field(json!({"quotas": [{"name": "q", "validDuration": "1s"}]})),
            "redisServerUrl"
        );
        assert_eq!(field(json!({"redisServerUrl": "localhost:6379"})), "quotas");
        assert_eq!(
            field(json!({"redisServerUrl": "localhost:6379", "quotas": []})),
            "quotas"
        );
        assert_eq!(
            field(json!({"redisServerUrl": "localhost:6379", "quotas": [{"validDuration": "1s"}]})),
            "quotas[0].name"
        );
        assert_eq!(
            field(quota(json!({"validDuration": "0s"}))),
            "quotas[0].validDuration"
        );
        assert_eq!(
            field(quota(json!({"rateLimitAlgorithm": "ROLLING_WINDOW"}))),
            "quotas[0].bucketDuration"
        );
        let e = build(quota(
            json!({"rateLimitAlgorithm": "ROLLING_WINDOW", "bucketDuration": "10s"}),
        ))
        .unwrap_err();
        assert_eq!(e.field, "quotas[0].validDuration");
        assert!(e.message.contains("should be longer than"), "{e}");
        // FIXED_WINDOW ignores the bucket.
        build(quota(json!({"bucketDuration": "20s"}))).unwrap();
        assert_eq!(
            field(quota(json!({"rateLimitAlgorithm": "LEAKY_BUCKET"}))),
            "quotas[0].rateLimitAlgorithm"
        );
        assert_eq!(
            field(quota(
                json!({"overrides": [{"dimensions": {"a": "b"}, "maxAmount": 0}]})
            )),
            "quotas[0].overrides[0].maxAmount"
        );
        assert_eq!(
            field(quota(json!({"overrides": [{"maxAmount": 3}]}))),
            "quotas[0].overrides[0].dimensions"
        );
        assert_eq!(
            field(quota(json!({"maxAmount": -1}))),
            "quotas[0].maxAmount"
        );
        assert_eq!(
            field(
                json!({"redisServerUrl": "localhost:6379", "connectionPoolSize": -1, "quotas": [{"name": "q", "validDuration": "1s"}]})
            ),
            "connectionPoolSize"
        );
        assert_eq!(
            field(
                json!({"redisServerUrl": "http://x", "quotas": [{"name": "q", "validDuration": "1s"}]})
            ),
            "redisServerUrl"
        );
        assert_eq!(
            field(
                json!({"redisServerUrl": "x:1", "socketType": "tcp", "quotas": [{"name": "q", "validDuration": "1s"}]})
            ),
            "socketType"
        );
        let e = build(json!({"redisServerUrl": "x:1", "quotas": [
            {"name": "q", "validDuration": "1s"}, {"name": "q", "validDuration": "2s"}]}))
        .unwrap_err();
        assert_eq!(e.field, "quotas[1].name");
    }

    // --- Against a real redis-server. ---

    use crate::attribute::Value as Attr;
    use crate::config::{Instance, Variety};
    use std::borrow::Cow;
    use std::net::TcpStream;

    /// A redis-server on a free port with its own directory; killed (by pid) on drop.
    struct RedisServer {
        child: std::process::Child,
        port: u16,
        _dir: tempfile::TempDir,
    }

    impl RedisServer {
        fn start_on(port: u16) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(dir.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run redis-server ({e}): run `make deps` to install it")
                });
            let server = Self {
                child,
                port,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "redis-server did not start on {port}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            server
        }

        fn start() -> Self {
            Self::start_on(free_port())
        }

        fn url(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn running(p: Value) -> (RedisQuota, mesh_runtime::Shutdown) {
        let shutdown = mesh_runtime::Shutdown::new();
        let env = AdapterEnv {
            prometheus: Default::default(),
            start_tasks: true,
            shutdown: shutdown.clone(),
        };
        (RedisQuota::build(&p, &env).unwrap(), shutdown)
    }

    fn instance(name: &str) -> Instance {
        Instance {
            name: name.into(),
            short_name: name.split('.').next().unwrap().into(),
            namespace: "istio-system".into(),
            template: "quota".into(),
            variety: Variety::Quota,
            fields: vec!["dimensions.destination".into()],
            exprs: Vec::new(),
        }
    }

    /// Asks `h` for `amount` for `destination`: (code, amount granted).
    async fn ask(
        h: &RedisQuota,
        destination: &str,
        amount: i64,
        dedup: &str,
        best_effort: bool,
    ) -> (i32, i64) {
        let inst = instance("requestcount.quota.istio-system");
        let values = InstanceValues {
            instance: &inst,
            values: vec![Some(Attr::String(Cow::Borrowed(destination)))],
        };
        let r = h
            .quota(
                &values,
                &QuotaArgs {
                    amount,
                    best_effort,
                    deduplication_id: dedup,
                },
            )
            .await;
        (r.status.code, r.amount)
    }

    fn params(url: &str, quota: Value) -> Value {
        let mut q = json!({"name": "requestcount.quota.istio-system"});
        for (k, v) in quota.as_object().unwrap() {
            q[k] = v.clone();
        }
        json!({"redisServerUrl": url, "connectionPoolSize": 2, "quotas": [q]})
    }

    const OK: i32 = code::OK;
    const EXHAUSTED: i32 = code::RESOURCE_EXHAUSTED;

    #[tokio::test]
    async fn fixed_window_counts_overrides_dedups_and_starts_over() {
        let redis = RedisServer::start();
        let (h, _stop) = running(params(
            &redis.url(),
            json!({
                "maxAmount": 5, "validDuration": "2s",
                "overrides": [{"dimensions": {"destination": "limited"}, "maxAmount": 2}],
            }),
        ));
        for i in 0..5 {
            assert_eq!(ask(&h, "svc", 1, "", false).await, (OK, 1), "request {i}");
        }
        assert_eq!(ask(&h, "svc", 1, "", false).await, (EXHAUSTED, 0));
        // Another destination has its own counter, with its override's limit.
        assert_eq!(ask(&h, "limited", 1, "a", false).await, (OK, 1));
        // The same deduplication id gets the same answer without being charged again.
        assert_eq!(ask(&h, "limited", 1, "a", false).await, (OK, 1));
        assert_eq!(ask(&h, "limited", 1, "b", false).await, (OK, 1));
        assert_eq!(ask(&h, "limited", 1, "c", false).await, (EXHAUSTED, 0));
        // The window starts over.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(ask(&h, "svc", 5, "", false).await, (OK, 5));
        assert_eq!(ask(&h, "limited", 1, "", false).await, (OK, 1));
    }

    #[tokio::test]
    async fn best_effort_grants_what_is_left() {
        let redis = RedisServer::start();
        for algorithm in [
            json!({}),
            json!({"rateLimitAlgorithm": "ROLLING_WINDOW", "bucketDuration": "1s"}),
        ] {
            let mut q = json!({"maxAmount": 5, "validDuration": "60s"});
            for (k, v) in algorithm.as_object().unwrap() {
                q[k] = v.clone();
            }
            let (h, _stop) = running(params(&redis.url(), q));
            let dest = format!("best-effort-{algorithm}");
            assert_eq!(ask(&h, &dest, 3, "", false).await, (OK, 3));
            assert_eq!(
                ask(&h, &dest, 3, "", false).await,
                (EXHAUSTED, 0),
                "{algorithm}"
            );
            assert_eq!(ask(&h, &dest, 3, "", true).await, (OK, 2), "{algorithm}");
            assert_eq!(
                ask(&h, &dest, 1, "", true).await,
                (EXHAUSTED, 0),
                "{algorithm}"
            );
        }
    }

    #[tokio::test]
    async fn rolling_window_releases_bucket_by_bucket() {
        let redis = RedisServer::start();
        let (h, _stop) = running(params(
            &redis.url(),
            json!({
                "maxAmount": 4, "validDuration": "2s", "bucketDuration": "200ms",
                "rateLimitAlgorithm": "ROLLING_WINDOW",
            }),
        ));
        assert_eq!(ask(&h, "r", 2, "", false).await, (OK, 2));
        let first = Instant::now();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let second = Instant::now();
        assert_eq!(ask(&h, "r", 2, "", false).await, (OK, 2));
        assert_eq!(ask(&h, "r", 1, "", false).await, (EXHAUSTED, 0));
        // The first two are released 2.2s after their grant at the latest (the end of their
        // 200ms bucket plus the window), the last two 2s after theirs at the earliest. A
        // fixed window would have started over with all four available.
        tokio::time::sleep(Duration::from_millis(2300).saturating_sub(first.elapsed())).await;
        assert_eq!(ask(&h, "r", 2, "", false).await, (OK, 2));
        assert_eq!(ask(&h, "r", 1, "", false).await, (EXHAUSTED, 0));
        assert!(
            second.elapsed() < Duration::from_millis(2000),
            "too slow to tell: {:?}",
            second.elapsed()
        );
    }

    #[tokio::test]
    async fn rolling_window_never_grants_more_than_max_in_any_window() {
        let redis = RedisServer::start();
        let (h, _stop) = running(params(
            &redis.url(),
            json!({
                "maxAmount": 5, "validDuration": "200ms", "bucketDuration": "20ms",
                "rateLimitAlgorithm": "ROLLING_WINDOW",
            }),
        ));
        // Each grant happened on the server somewhere between the call's start and its end, so
        // two grants are surely in one window only when the later one's end is less than a
        // window after the earlier one's start. Counting those alone keeps a slow, loaded
        // machine from faking a violation.
        let start = Instant::now();
        let mut grants: Vec<(Instant, Instant)> = Vec::new();
        while start.elapsed() < Duration::from_millis(1200) {
            let before = Instant::now();
            let (code, amount) = ask(&h, "window", 1, "", false).await;
            let after = Instant::now();
            assert!(code == OK || code == EXHAUSTED, "{code}");
            if amount == 1 {
                grants.push((before, after));
            }
        }
        for (k, (t, _)) in grants.iter().enumerate() {
            let within = grants[k..]
                .iter()
                .take_while(|(_, end)| *end - *t < Duration::from_millis(200))
                .count();
            assert!(
                within <= 5,
                "{within} grants surely within 200ms from grant {k}"
            );
        }
        // More than five grants in 1.2s means buckets left the window and were granted again.
        assert!(grants.len() > 5, "only {} grants in 1.2s", grants.len());
    }

    #[tokio::test]
    async fn rolling_window_drops_old_buckets_after_a_pause() {
        let redis = RedisServer::start();
        let (h, _stop) = running(params(
            &redis.url(),
            json!({
                "maxAmount": 5, "validDuration": "400ms", "bucketDuration": "20ms",
                "rateLimitAlgorithm": "ROLLING_WINDOW",
            }),
        ));
        assert_eq!(ask(&h, "pause", 2, "", false).await, (OK, 2));
        let first = Instant::now();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = Instant::now();
        assert_eq!(ask(&h, "pause", 3, "", false).await, (OK, 3));
        assert_eq!(ask(&h, "pause", 1, "", false).await, (EXHAUSTED, 0));
        // Past the first grant's bucket (gone by 420ms), well before the second's (400ms
        // after it at the earliest): more bucket numbers have passed than there are buckets.
        tokio::time::sleep(Duration::from_millis(460).saturating_sub(first.elapsed())).await;
        assert_eq!(ask(&h, "pause", 2, "", false).await, (OK, 2));
        assert_eq!(ask(&h, "pause", 1, "", false).await, (EXHAUSTED, 0));
        assert!(
            second.elapsed() < Duration::from_millis(400),
            "too slow to tell"
        );
    }

    #[tokio::test]
    async fn redis_down_is_unavailable_fast_and_recovers() {
        let port = free_port();
        let (h, _stop) = running(params(
            &format!("127.0.0.1:{port}"),
            json!({"maxAmount": 5, "validDuration": "60s"}),
        ));
        let inst = instance("requestcount.quota.istio-system");
        let values = InstanceValues {
            instance: &inst,
            values: vec![Some(Attr::String(Cow::Borrowed("down")))],
        };
        let args = QuotaArgs {
            amount: 1,
            best_effort: false,
            deduplication_id: "",
        };
        let start = Instant::now();
        let r = h.quota(&values, &args).await;
        assert_eq!(r.status.code, code::UNAVAILABLE, "{r:?}");
        assert!(
            r.status
                .message
                .contains(&format!("redis at 127.0.0.1:{port} is unreachable")),
            "{r:?}"
        );
        assert!(start.elapsed() < REDIS_TIMEOUT, "{:?}", start.elapsed());

        // Redis comes up: requests succeed again once the backoff has passed.
        let redis = RedisServer::start_on(port);
        let deadline = Instant::now() + Duration::from_secs(5);
        while ask(&h, "down", 1, "", false).await != (OK, 1) {
            assert!(Instant::now() < deadline, "no recovery after redis came up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Redis goes away again: the broken connection is noticed and reported.
        drop(redis);
        let r = h.quota(&values, &args).await;
        assert_eq!(r.status.code, code::UNAVAILABLE, "{r:?}");
    }

    #[tokio::test]
    async fn a_redis_that_never_answers_costs_at_most_the_timeout() {
        // Accepts connections and never says a word.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = Arc::new(Mutex::new(Vec::new()));
        let keep = held.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                keep.lock().push(s);
            }
        });
        let (h, stop) = running(params(
            &format!("127.0.0.1:{port}"),
            json!({"maxAmount": 5, "validDuration": "60s"}),
        ));
        let start = Instant::now();
        let (code, amount) = ask(&h, "silent", 1, "", false).await;
        let took = start.elapsed();
        assert_eq!((code, amount), (code::UNAVAILABLE, 0));
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert!(
            took < REDIS_TIMEOUT + Duration::from_millis(500),
            "{took:?}"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn quota_calls_waiting_on_redis_do_not_stall_the_runtime() {
        // A "redis" that accepts connections and never answers: each call waits ~1s.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in listener.incoming().flatten() {
                held.push(s);
            }
        });
        let (h, stop) = running(params(
            &format!("127.0.0.1:{port}"),
            json!({"maxAmount": 100, "validDuration": "60s"}),
        ));
        let h = Arc::new(h);
        // On a single-threaded runtime: a call that held its thread while it waited would
        // keep everything else from running for a second.
        let mut waiting = Vec::new();
        for i in 0..2 {
            let h = h.clone();
            waiting.push(tokio::spawn(async move {
                ask(&h, &format!("stall-{i}"), 1, "", false).await
            }));
        }
        let start = Instant::now();
        let mut ticks = 0;
        while start.elapsed() < Duration::from_millis(800) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ticks += 1;
        }
        for w in waiting {
            assert_eq!(w.await.unwrap().0, code::UNAVAILABLE);
        }
        assert!(ticks > 30, "the runtime stalled: {ticks} ticks in 800ms");
        stop.cancel();
    }
    #[tokio::test]
    async fn concurrent_requests_share_one_connection_and_count_exactly() {
        let redis = RedisServer::start();
        let mut p = params(
            &redis.url(),
            json!({"maxAmount": 100, "validDuration": "60s"}),
        );
        p["connectionPoolSize"] = json!(1);
        let (h, _stop) = running(p);
        let h = Arc::new(h);
        // Five hundred requests at once on one multiplexed connection: exactly 100 granted.
        let mut asks = Vec::new();
        for _ in 0..500 {
            let h = h.clone();
            asks.push(tokio::spawn(async move {
                ask(&h, "shared", 1, "", false).await
            }));
        }
        let mut granted = 0;
        for a in asks {
            match a.await.unwrap() {
                (OK, 1) => granted += 1,
                (EXHAUSTED, 0) => {}
                other => panic!("unexpected answer {other:?}"),
            }
        }
        assert_eq!(granted, 100);
        // Redis saw one client: ours (this test's own connection is the second).
        let mut con = redis::Client::open(format!("redis://{}", redis.url()))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(info.contains("connected_clients:2"), "{info}");
    }

    #[tokio::test]
    async fn scripts_are_loaded_again_after_a_flush_or_a_restart() {
        let redis = RedisServer::start();
        let port = redis.port;
        let (h, _stop) = running(params(
            &redis.url(),
            json!({"maxAmount": 3, "validDuration": "60s"}),
        ));
        assert_eq!(ask(&h, "flush", 1, "", false).await, (OK, 1));
        let admin = redis::Client::open(format!("redis://{}", redis.url())).unwrap();
        let mut con = admin.get_multiplexed_async_connection().await.unwrap();
        let sha = redis::Script::new(FIXED_WINDOW_SCRIPT)
            .get_hash()
            .to_string();
        let exists: Vec<bool> = redis::cmd("SCRIPT")
            .arg("EXISTS")
            .arg(&sha)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(exists, vec![true], "the script was loaded when connecting");
        // Redis forgets its scripts: the next request gets NOSCRIPT, loads it and runs.
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(ask(&h, "flush", 1, "", false).await, (OK, 1));
        // Redis restarts (empty, on the same port): the broken connection fails one request
        // UNAVAILABLE at most, then a new one is opened, with the scripts loaded again.
        drop(con);
        drop(redis);
        let _redis = RedisServer::start_on(port);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match ask(&h, "flush", 1, "", false).await {
                (OK, 1) => break,
                (code::UNAVAILABLE, 0) => {}
                other => panic!("unexpected answer {other:?}"),
            }
            assert!(Instant::now() < deadline, "no recovery after the restart");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The restarted Redis has no count yet: three more fit.
        assert_eq!(ask(&h, "flush", 2, "", false).await, (OK, 2));
        assert_eq!(ask(&h, "flush", 1, "", false).await, (EXHAUSTED, 0));
    }

    #[tokio::test]
    async fn requests_beyond_the_in_flight_bound_are_refused_at_once() {
        let port = free_port();
        let (h, _stop) = running(params(
            &format!("127.0.0.1:{port}"),
            json!({"maxAmount": 5, "validDuration": "60s"}),
        ));
        let inst = instance("requestcount.quota.istio-system");
        let values = InstanceValues {
            instance: &inst,
            values: vec![Some(Attr::String(Cow::Borrowed("busy")))],
        };
        let args = QuotaArgs {
            amount: 1,
            best_effort: false,
            deduplication_id: "",
        };
        // Requests count from when they are made until answered (or dropped).
        let waiting: Vec<_> = (0..MAX_IN_FLIGHT)
            .map(|_| h.quota(&values, &args))
            .collect();
        let r = h.quota(&values, &args).await;
        assert_eq!(r.status.code, code::UNAVAILABLE, "{r:?}");
        assert!(
            r.status.message.contains("too many quota requests"),
            "{r:?}"
        );
        drop(waiting);
        let r = h.quota(&values, &args).await;
        assert!(r.status.message.contains("is unreachable"), "{r:?}");
    }

    #[test]
    fn a_request_outside_a_runtime_is_refused_not_a_panic() {
        let (h, _stop) = running(params(
            "127.0.0.1:1",
            json!({"maxAmount": 5, "validDuration": "60s"}),
        ));
        let inst = instance("requestcount.quota.istio-system");
        let values = InstanceValues {
            instance: &inst,
            values: vec![Some(Attr::String(Cow::Borrowed("x")))],
        };
        let args = QuotaArgs {
            amount: 1,
            best_effort: false,
            deduplication_id: "",
        };
        let r = futures::executor::block_on(h.quota(&values, &args));
        assert_eq!(r.status.code, code::UNAVAILABLE, "{r:?}");
        assert!(
            r.status.message.contains("outside a tokio runtime"),
            "{r:?}"
        );
    }
}
