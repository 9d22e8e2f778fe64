//! A token bucket over a byte stream: the per-transfer bandwidth cap (`--transfer-rate`).
//!
//! The bucket holds at most one second of bytes, so a stream never bursts above its rate for
//! longer than that; chunks larger than the bucket are split so each waits its own share.

use axum::body::Bytes;
use futures_util::Stream;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::time::Instant;

/// Pure part: how long to wait before `n` more bytes may go, given the bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: u64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: u64, now: Instant) -> Bucket {
        Bucket {
            rate: rate.max(1),
            tokens: rate.max(1) as f64,
            last: now,
        }
    }

    /// Takes `n` bytes' tokens; returns how long the caller must wait first.
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.rate as f64);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate as f64)
        }
    }

    /// Largest piece sent at once: a tenth of a second's worth (at least 1 KiB).
    pub fn piece(&self) -> usize {
        ((self.rate / 10).max(1024)) as usize
    }
}

/// `stream` limited to `rate` bytes per second.
pub fn limit<S, E>(stream: S, rate: u64) -> impl Stream<Item = Result<Bytes, E>> + Send
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    let bucket = Bucket::new(rate, Instant::now());
    let piece = bucket.piece();
    stream
        .flat_map(move |item| {
            let parts: Vec<Result<Bytes, E>> = match item {
                Ok(mut b) => {
                    let mut v = Vec::new();
                    while b.len() > piece {
                        v.push(Ok(b.split_to(piece)));
                    }
                    v.push(Ok(b));
                    v
                }
                Err(e) => vec![Err(e)],
            };
            futures_util::stream::iter(parts)
        })
        .scan(bucket, |bucket, item| {
            let wait = match &item {
                Ok(b) => bucket.take(b.len() as u64, Instant::now()),
                Err(_) => Duration::ZERO,
            };
            async move {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Some(item)
            }
        })
}

impl super::Server {
    /// A content download's body, throttled to `--transfer-rate` when set.
    pub fn content_body<S>(&self, stream: S) -> axum::body::Body
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        // Counted as the body is read out to the client, so an aborted download counts what went.
        let sent = self.ops.transfer_bytes.clone();
        let stream = futures_util::StreamExt::inspect(stream, move |chunk| {
            if let Ok(b) = chunk {
                sent.inc_by(b.len() as u64);
            }
        });
        match self.caps.transfer_rate {
            Some(rate) => axum::body::Body::from_stream(limit(stream, rate)),
            None => axum::body::Body::from_stream(stream),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_lets_one_second_through_then_paces() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, t0);
        assert_eq!(b.take(1000, t0), Duration::ZERO);
        assert_eq!(b.take(500, t0), Duration::from_millis(500));
        // Half a second later the debt is paid; the next 500 bytes wait another half second.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(b.take(500, t1), Duration::from_millis(500));
        // Long idle refills at most one second's worth.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(b.take(1000, t2), Duration::ZERO);
        assert!(b.take(1, t2) > Duration::ZERO);
    }
}
