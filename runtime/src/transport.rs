//! QUIC transport settings both ends share. quinn's defaults suit 100 Mbps at 100 ms with 100 streams;
//! a tunnel carries thousands of watches, so stream credit and windows are raised and every bound is explicit.
use std::time::Duration;

use quinn::{TransportConfig, VarInt};

/// Bidirectional streams a spoke may open on its tunnel: the control stream and one renewal at a time, with
/// room for a retried renewal. quinn keeps an entry for every stream the peer may open, from the start: the
/// 20,000 a client grants cost the hub 1.6 MiB per tunnel when it granted as many.
pub const SPOKE_OPENED_STREAMS: u32 = 8;

#[derive(Debug, Clone)]
pub struct TransportSettings {
    /// Concurrent bidirectional streams the peer may open. The client grants the hub 20,000 (10,000 idle
    /// watches needed that much credit); the hub grants the client [`SPOKE_OPENED_STREAMS`].
    pub max_concurrent_streams: u32,
    /// Per-stream receive window: bounds what one slow reader can buffer, and throughput (window / RTT).
    pub stream_window: u64,
    /// Connection-wide receive window; larger than one stream's so a stalled stream cannot starve others.
    pub connection_window: u64,
    pub keep_alive: Duration,
    pub idle_timeout: Duration,
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 20_000,
            stream_window: 16 * 1024 * 1024,
            connection_window: 256 * 1024 * 1024,
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

impl TransportSettings {
    pub fn to_quinn(&self) -> TransportConfig {
        let mut config = TransportConfig::default();
        config
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_streams))
            // Only the hub opens data streams and the client opens one control stream; no uni streams.
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u64(self.stream_window).unwrap_or(VarInt::MAX))
            .receive_window(VarInt::from_u64(self.connection_window).unwrap_or(VarInt::MAX))
            .send_window(self.connection_window)
            .keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(self.idle_timeout.try_into().ok());
        config
    }
}

/// Turns quinn's cumulative per-connection counters into increments of a process-wide byte counter
/// (labelled by direction), sampled on the heartbeat tick rather than per packet.
#[derive(Debug)]
pub struct ByteCounter {
    name: &'static str,
    rx: u64,
    tx: u64,
}

impl ByteCounter {
    pub fn new(name: &'static str) -> Self {
        Self { name, rx: 0, tx: 0 }
    }

    pub fn sample(&mut self, connection: &quinn::Connection) {
        let stats = connection.stats();
        metrics::counter!(self.name, "direction" => "rx").increment(stats.udp_rx.bytes.saturating_sub(self.rx));
        metrics::counter!(self.name, "direction" => "tx").increment(stats.udp_tx.bytes.saturating_sub(self.tx));
        self.rx = stats.udp_rx.bytes;
        self.tx = stats.udp_tx.bytes;
    }
}
