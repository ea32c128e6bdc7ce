/// A body's error as it came, whatever the body (hyper's, quinn's, a proxied connection's).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What can fail while reading a head from a stream or writing a head and body to it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer sent a head that breaks the wire format.
    #[error("stream: {0}")]
    Protocol(#[from] tether_proto::Error),
    #[error("reading the stream: {0}")]
    Read(#[source] quinn::ReadError),
    #[error("writing the stream: {0}")]
    Write(#[source] quinn::WriteError),
    /// The body being sent failed half-way; the stream was reset.
    #[error("body: {0}")]
    Body(#[source] BoxError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
