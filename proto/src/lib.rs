//! tether's wire protocol, sans-IO: no sockets, no clocks, no runtime. Callers pass bytes and
//! `now` in and take bytes, timeouts and events out, so both ends share one implementation
//! and tests run on simulated time.
//!
//! # Connection
//!
//! The spoke's tunnel-client dials the hub's tunnel-server over QUIC with ALPN [`ALPN`]
//! (`tether/2`). The client opens the first bidirectional stream, the **control stream**,
//! driven on each end by a [`Session`]. Every other bidirectional stream is opened by the hub,
//! one per proxied request or TCP connection, and starts with a [`StreamHeader`].
//!
//! # Wire format
//!
//! All integers are big-endian. A string is a `u16` byte length followed by UTF-8; each
//! string field has a limit far below `u16::MAX`. Every length is checked against its limit
//! and against the bytes that hold it before anything is read; a header or frame must be used
//! up exactly by its fields.
//!
//! **Stream header** (see [`header`]), at most 2 + [`MAX_HEADER_LEN`] bytes, 11 for the
//! apiserver:
//!
//! ```text
//! u16 body_len | u8 kind | u64 request_id | kind 1 (service): str namespace, str name, u16 port
//! ```
//!
//! `kind` 0 is the spoke's apiserver, 1 a Service; names are 1..=[`MAX_NAME_LEN`] bytes and
//! the port is non-zero.
//!
//! **HTTP heads** (see [`http_head`]): on an apiserver stream the header is followed by a
//! [`RequestHead`] and the request body up to the hub's FIN; the spoke answers with a
//! [`ResponseHead`] and the response body up to its FIN (a reset, never a FIN, for a body cut
//! short). Version 1 carried HTTP/1.1 here instead.
//!
//! **Control frames** (see [`control`]): `u32 len | u8 type | payload`, where `len` counts the
//! type and payload and is at most [`MAX_CONTROL_FRAME`].
//!
//! | type | message | payload |
//! |------|---------|---------|
//! | 0x01 | Hello   | `u16 version, str client_version, str instance` |
//! | 0x02 | Welcome | `u16 version, str cluster, u32 heartbeat_interval_ms` |
//! | 0x03 | Ping    | `u64 seq` |
//! | 0x04 | Pong    | `u64 seq` (echoes the Ping) |
//! | 0x05 | GoAway  | `str reason` |
//! | 0x80 | SpokeInfo | `str apiserver_version, pem ca_bundle` (client to hub, optional) |
//! | 0x81–0xff | extensions | skipped by a peer that does not know them |
//!
//! Control strings are at most [`MAX_STRING_LEN`] bytes, PEM fields [`MAX_PEM_LEN`].
//!
//! **Certificate renewal** runs over the tunnel itself: the client opens a bidirectional stream on
//! its mTLS connection (every client-opened stream after the control stream is one) and runs the
//! bootstrap exchange below on it, without a token: its certificate proves the cluster.
//!
//! **Bootstrap** (see [`bootstrap`]): a spoke without a certificate dials with ALPN
//! [`BOOTSTRAP_ALPN`] (`tether-bootstrap/1`) and no client certificate, sends one
//! [`BootstrapRequest`] (cluster, token, CSR) on one bidirectional stream, and reads
//! [`BootstrapResponse`]s (`Pending`, then `Issued` or `Refused`) in frames laid out as control
//! frames, at most [`MAX_BOOTSTRAP_FRAME`] bytes.
//!
//! # Close and reset codes
//!
//! Every QUIC application error code either end sends, on a connection close or a stream reset, is a
//! [`Code`]; [`codes`] holds the table with each code's number, sender and meaning. The client turns the
//! code its tunnel was closed with into what it does next (redial, back off longer, or stop and say why).
//!
//! # Versions
//!
//! [`PROTOCOL_VERSION`] is the major version, also carried in the ALPN. Hello and Welcome
//! start with it in every version; a peer with another one is a protocol error that names
//! both versions, and the hub closes the connection with [`Code::VersionMismatch`]. A
//! compatible addition within a major version uses a new extension type.
//!
//! # Errors
//!
//! Decoders never panic: bad input is an [`Error`], and the caller closes the stream (bad
//! header) or the tunnel (anything on the control stream). Encoders never fail: a value over
//! a limit is written so that the peer rejects it rather than misreads it; callers that build
//! headers from user input check them with [`StreamHeader::validate`] first.

pub mod backoff;
pub mod bootstrap;
pub mod codes;
pub mod control;
mod error;
pub mod header;
pub mod http_head;
pub mod session;
mod wire;

pub use backoff::Backoff;
pub use bootstrap::{
    BootstrapRequest, BootstrapResponse, ResponseDecoder, BOOTSTRAP_ALPN, BOOTSTRAP_VERSION, MAX_BOOTSTRAP_FRAME,
};
pub use codes::Code;
pub use control::{ControlMessage, FrameDecoder, MAX_PEM_LEN, MAX_STRING_LEN};
pub use error::{Error, Result};
pub use header::{StreamHeader, Target, MAX_HEADER_LEN, MAX_NAME_LEN};
pub use http_head::{RequestHead, ResponseHead, MAX_HEAD_LEN};
pub use session::{Event, Role, Session, SessionConfig, MIN_HEARTBEAT_INTERVAL};

/// The ALPN protocol id of tether's QUIC connections.
pub const ALPN: &[u8] = b"tether/2";

/// The major protocol version, exchanged in Hello and Welcome.
pub const PROTOCOL_VERSION: u16 = 2;

/// Largest control frame (type + payload) a [`Session`] accepts.
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;
