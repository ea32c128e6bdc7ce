//! QUIC transport settings both ends share. quinn's defaults suit 100 Mbps at 100 ms with 100 streams;
//! a tunnel carries thousands of watches, so stream credit and windows are raised and every bound is explicit.
use std::time::Duration;

use quinn::{TransportConfig, VarInt};
use tether_proto::Code;

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
    /// These settings for a connection whose peer is not known yet: the peer may open one stream and have
    /// at most `window` bytes in flight to us over all its streams. An endpoint that takes both
    /// authenticated and unauthenticated peers (the hub: tunnels and bootstrap) accepts every connection
    /// with these and [`lifts`](Self::lift) it once the peer is verified. Stream windows stay as they are:
    /// quinn fixes them in the handshake, the streams a hub opens on a tunnel later need them for bulk
    /// transfers, and the connection window bounds what all streams of a peer may buffer together.
    pub fn unauthenticated(&self, window: u64) -> Self {
        Self { max_concurrent_streams: 1, connection_window: window.min(self.connection_window), ..self.clone() }
    }

    /// Raises a connection accepted with [`unauthenticated`](Self::unauthenticated) settings to these.
    pub fn lift(&self, connection: &quinn::Connection) {
        connection.set_receive_window(VarInt::from_u64(self.connection_window).unwrap_or(VarInt::MAX));
        connection.set_send_window(self.connection_window);
        connection.set_max_concurrent_bi_streams(VarInt::from_u32(self.max_concurrent_streams));
    }

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
            .max_idle_timeout(self.idle_timeout.try_into().ok())
            // tether sends no datagrams: quinn would otherwise buffer 1.25 MB of a peer's unread ones.
            .datagram_receive_buffer_size(None);
        config
    }
}

/// A tether [`Code`] as the `VarInt` quinn's `close` and `reset` take.
pub fn code(code: Code) -> VarInt {
    VarInt::from_u32(code.value())
}

/// The tether [`Code`] a connection was closed with by its peer, if it was closed that way (`None` for a
/// timeout, a reset, a transport error, or a code this build does not know).
pub fn peer_code(error: &quinn::ConnectionError) -> Option<(Code, &[u8])> {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            Code::try_from(close.error_code.into_inner()).ok().map(|code| (code, &close.reason[..]))
        }
        _ => None,
    }
}

/// Socket buffer asked for on each QUIC endpoint's UDP socket (the kernel caps it at `net.core.rmem_max` and
/// `wmem_max`). A bulk transfer arrives in bursts of GSO batches; with Linux's default 208 KiB, 0.6 % of the
/// datagrams of a 1 GiB response were dropped on loopback, and each drop halved the congestion window.
pub const UDP_BUFFER: usize = 8 * 1024 * 1024;

/// A UDP socket bound to `addr` for a QUIC endpoint, with [`UDP_BUFFER`] asked for both directions. Where the
/// kernel grants less, a warning says which sysctl to raise.
pub fn udp_socket(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    if addr.is_ipv6() {
        // Dual-stack, as std's bind of `[::]` is where the platform allows it.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a smaller buffer works, only slower under bursts.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into())?;
    // Linux reports double what it grants (the kernel's bookkeeping half).
    let granted = socket.recv_buffer_size().unwrap_or(0) / 2;
    if granted < UDP_BUFFER / 4 {
        tracing::warn!(
            granted,
            wanted = UDP_BUFFER,
            "small UDP receive buffer: raise net.core.rmem_max for bulk transfers without loss"
        );
    }
    Ok(socket.into())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_sockets_get_the_largest_buffer_the_kernel_allows() {
        let socket = socket2::Socket::from(udp_socket("127.0.0.1:0".parse().unwrap()).unwrap());
        let max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap().trim().parse().unwrap();
        // Linux reports twice what was set; without the option it would be the 208 KiB default.
        assert!(socket.recv_buffer_size().unwrap() / 2 >= UDP_BUFFER.min(max), "{:?}", socket.recv_buffer_size());
        assert_ne!(socket.local_addr().unwrap().as_socket().unwrap().port(), 0);
    }
}
