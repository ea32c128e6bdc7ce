//! The one error type of this crate.
//!
//! Every variant describes input that a peer must never send; the caller's answer to any of
//! them is the same: close the stream (for a stream header) or the whole tunnel (for the
//! control stream), using the `Display` text as the close reason.

/// A protocol violation found while decoding bytes or driving a [`crate::Session`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A stream header declared a body longer than [`crate::MAX_HEADER_LEN`].
    #[error("stream header declares {declared} bytes, the limit is {max}")]
    HeaderTooLong { declared: usize, max: usize },

    /// An HTTP head declared a length above [`crate::MAX_HEAD_LEN`].
    #[error("{what} declares {declared} bytes, the limit is {max}")]
    HeadTooLong { what: &'static str, declared: usize, max: usize },

    /// A control frame declared a length above the decoder's limit.
    #[error("control frame declares {declared} bytes, the limit is {max}")]
    FrameTooLarge { declared: usize, max: usize },

    /// A control frame of length zero (it must hold at least the message type).
    #[error("empty control frame")]
    EmptyFrame,

    /// A stream header named a target kind this version does not know.
    #[error("unknown stream target kind {0:#04x}")]
    UnknownTarget(u8),

    /// A control frame carried a message type below the ignorable extension range.
    #[error("unknown control message type {0:#04x}")]
    UnknownMessage(u8),

    /// A field runs past the end of the header or frame that holds it.
    #[error("{what} is truncated")]
    Truncated { what: &'static str },

    /// A header or frame is longer than the fields it holds.
    #[error("{what} has {len} trailing bytes")]
    TrailingBytes { what: &'static str, len: usize },

    /// A string field is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: &'static str },

    /// A string field is longer than its limit.
    #[error("{what} is {len} bytes long, the limit is {max}")]
    StringTooLong { what: &'static str, len: usize, max: usize },

    /// A field holds a value that can never be valid (an empty name, port 0, ...).
    #[error("invalid {what}: {reason}")]
    InvalidField { what: &'static str, reason: &'static str },

    /// The peer speaks another major protocol version.
    #[error("protocol version mismatch: the peer speaks tether/{theirs}, this end speaks tether/{ours}")]
    VersionMismatch { ours: u16, theirs: u16 },

    /// A QUIC application error code that is not in [`crate::Code`] (a newer peer's).
    #[error("unknown QUIC application error code {0:#x}")]
    UnknownCode(u64),

    /// A well-formed message that is not allowed in the session's current state.
    #[error("unexpected {message} message {state}")]
    UnexpectedMessage { message: &'static str, state: &'static str },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
