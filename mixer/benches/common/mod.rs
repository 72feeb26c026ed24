//! What the Mixer benches share: the closed-loop load driver of `check`, `scale` and
//! `compare_ratelimit`.
//!
//! Closed loop: a fixed number of requests in flight, each task sending its next request
//! when the answer to the last one came, so latency is the service's and not queueing behind
//! an arbitrary backlog. A bench says what one request is by implementing [`Load`] on a
//! client (one per connection) and runs [`closed_loop`].

use std::future::Future;
use std::time::{Duration, Instant};

/// A client of the service under load; cloned for each task of its connection.
pub trait Load: Clone + Send + 'static {
    /// Sends request `i` and waits for its answer; `Err` ends the run with that reason.
    fn send(&mut self, i: usize) -> impl Future<Output = Result<(), String>> + Send;
}

/// The figures of one run (`check` reads no median).
#[allow(dead_code)]
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Sends requests `0..n` on `client`, one after the other.
pub async fn warm_up<L: Load>(client: &mut L, n: usize) -> Result<(), String> {
    for i in 0..n {
        client.send(i).await?;
    }
    Ok(())
}

/// Runs `per_connection` tasks on each of `clients` for `duration`: task `t` of client `c`
/// starts at request `first(c, t)` and moves on by `step`. The latency of every answer
/// counts; the first error (or a task that panicked) ends the run with it.
pub async fn closed_loop<L: Load>(
    clients: &[L],
    per_connection: usize,
    duration: Duration,
    first: impl Fn(usize, usize) -> usize,
    step: usize,
) -> Result<Run, String> {
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for t in 0..per_connection.max(1) {
            let mut client = client.clone();
            let mut i = first(c, t);
            tasks.push(tokio::spawn(async move {
                let mut latencies: Vec<u32> = Vec::new();
                while Instant::now() < end {
                    let t0 = Instant::now();
                    client.send(i).await?;
                    latencies.push(t0.elapsed().as_micros() as u32);
                    i += step;
                }
                Ok::<_, String>(latencies)
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| format!("load task: {e}"))??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    if all.is_empty() {
        return Err(format!("no answer within {duration:?}"));
    }
    all.sort_unstable();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)] as f64;
    Ok(Run {
        rps: all.len() as f64 / elapsed,
        p50_us: at(0.5),
        p99_us: at(0.99),
    })
}
