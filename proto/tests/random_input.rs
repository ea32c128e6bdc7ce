//! Stable-toolchain stand-in for the fuzz targets in `proto/fuzz`: thousands of pseudo-random
//! and mutated inputs (fixed seed, so failures reproduce) through every decoder. Each must
//! return without panicking, and whatever decodes must re-encode consistently.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tether_proto::{
    BootstrapRequest, BootstrapResponse, ControlMessage, Event, FrameDecoder, RequestHead, ResponseDecoder,
    ResponseHead, Role, Session, SessionConfig, StreamHeader, Target, BOOTSTRAP_VERSION, MAX_CONTROL_FRAME,
    PROTOCOL_VERSION,
};

const CASES: usize = 5000;

/// xorshift64*: small, deterministic, good enough to scatter bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n`; `n` must be non-zero.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// A few random edits of `input`: overwrite, insert, delete, truncate, duplicate.
    fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..=self.below(3) {
            let at = self.below(out.len() + 1);
            match self.below(5) {
                0 if at < out.len() => out[at] = self.next() as u8,
                1 => out.insert(at, self.next() as u8),
                2 if at < out.len() => {
                    out.remove(at);
                }
                3 => out.truncate(at),
                _ => {
                    let tail = out[at..].to_vec();
                    out.extend_from_slice(&tail);
                }
            }
        }
        out
    }
}

fn valid_headers() -> Vec<Vec<u8>> {
    let headers = [
        StreamHeader { target: Target::ApiServer, request_id: 42 },
        StreamHeader {
            target: Target::Service { namespace: "default".into(), name: "web".into(), port: 8080 },
            request_id: u64::MAX,
        },
    ];
    headers
        .iter()
        .map(|h| {
            let mut out = BytesMut::new();
            h.encode(&mut out);
            out.to_vec()
        })
        .collect()
}

fn valid_conversation(from_client: bool) -> Vec<u8> {
    let first = if from_client {
        ControlMessage::Hello { version: PROTOCOL_VERSION, client_version: "0.1.0".into(), instance: "pod-a".into() }
    } else {
        ControlMessage::Welcome { version: PROTOCOL_VERSION, cluster: "prod".into(), heartbeat_interval_ms: 10_000 }
    };
    let mut out = BytesMut::new();
    for m in [
        first,
        ControlMessage::Ping { seq: 1 },
        ControlMessage::Pong { seq: 1 },
        ControlMessage::GoAway { reason: "draining".into() },
    ] {
        m.encode(&mut out);
    }
    out.to_vec()
}

/// True if `input` held a whole valid header.
fn check_header(input: &[u8]) -> bool {
    let Ok(Some((header, consumed))) = StreamHeader::decode(input) else {
        return false;
    };
    {
        assert!(consumed <= input.len());
        let mut again = BytesMut::new();
        header.encode(&mut again);
        assert_eq!(&again[..], &input[..consumed], "encoding is canonical");
        assert_eq!(header.validate(), Ok(()));
    }
    true
}

#[test]
fn stream_header_decoder_survives_garbage() {
    let mut rng = Rng(0x7e7e_0001);
    let valid = valid_headers();
    let mut decoded = 0;
    for i in 0..CASES {
        let input = match i % 3 {
            0 => rng.bytes(64),
            1 => rng.mutate(&valid[i % valid.len()]),
            _ => {
                // A plausible length prefix in front of random bytes.
                let mut input = vec![0, rng.below(40) as u8];
                input.extend(rng.bytes(48));
                input
            }
        };
        decoded += usize::from(check_header(&input));
    }
    // The generator must reach the success path too, not only the error paths.
    assert!(decoded > CASES / 20, "only {decoded} inputs decoded");
}

/// Feeds `input` in random pieces; every decoded message must survive a round trip.
/// Returns how many messages decoded.
fn check_frames(rng: &mut Rng, input: &[u8]) -> usize {
    let mut decoded = 0;
    let mut decoder = FrameDecoder::new(MAX_CONTROL_FRAME);
    let mut rest = input;
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(1 + rng.below(rest.len()));
        rest = tail;
        decoder.push(piece);
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => {
                    let mut again = BytesMut::new();
                    message.encode(&mut again);
                    let mut check = FrameDecoder::new(MAX_CONTROL_FRAME);
                    check.push(&again);
                    assert_eq!(check.next_message(), Ok(Some(message)));
                    decoded += 1;
                }
                Ok(None) => break,
                Err(_) => {
                    assert!(decoder.next_message().is_err(), "errors are sticky");
                    return decoded;
                }
            }
        }
    }
    decoded
}

#[test]
fn frame_decoder_survives_garbage() {
    let mut rng = Rng(0x7e7e_0002);
    let valid = [valid_conversation(true), valid_conversation(false)];
    let mut decoded = 0;
    for i in 0..CASES {
        let input = match i % 3 {
            0 => rng.bytes(96),
            1 => rng.mutate(&valid[i % 2]),
            _ => {
                let mut input = vec![0, 0, 0, 1 + rng.below(24) as u8, 1 + rng.below(6) as u8];
                input.extend(rng.bytes(32));
                input
            }
        };
        decoded += check_frames(&mut rng, &input);
    }
    assert!(decoded > CASES / 4, "only {decoded} messages decoded");
}

/// Drives a session through `input` with random pieces and random clock jumps.
/// Returns whether the session got established.
fn check_session(rng: &mut Rng, role: Role, input: &[u8]) -> bool {
    let mut now = Instant::now();
    let config = SessionConfig { heartbeat_interval: Duration::from_secs(5), dead_after: Duration::from_secs(15) };
    let mut session = Session::new(role, config, now);
    let mut deaths = 0;
    let mut rest = input;
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(1 + rng.below(rest.len()));
        rest = tail;
        now += Duration::from_millis(rng.below(20_000) as u64);
        session.handle_timeout(now);
        if let Some(at) = session.poll_timeout() {
            assert!(at > now, "timeout in the past after handle_timeout");
        }
        let failed = session.handle_input(now, piece).is_err();
        while session.poll_transmit().is_some() {}
        while let Some(event) = session.poll_event() {
            deaths += usize::from(event == Event::Dead);
        }
        if failed {
            assert!(session.handle_input(now, b"x").is_err(), "errors are sticky");
            break;
        }
    }
    assert!(deaths <= 1, "Dead reported {deaths} times");
    session.is_established()
}

#[test]
fn sessions_survive_garbage() {
    let mut rng = Rng(0x7e7e_0003);
    let to_server = valid_conversation(true);
    let to_client = valid_conversation(false);
    let mut established = 0;
    for i in 0..CASES {
        let (role, valid) = if i % 2 == 0 {
            let role = Role::Server { cluster: "prod".into(), heartbeat_interval: Duration::from_secs(5) };
            (role, &to_server)
        } else {
            let role = Role::Client { client_version: "0.1.0".into(), instance: "pod-a".into() };
            (role, &to_client)
        };
        let input = if i % 3 == 0 { rng.bytes(96) } else { rng.mutate(valid) };
        established += usize::from(check_session(&mut rng, role, &input));
    }
    assert!(established > CASES / 20, "only {established} sessions established");
}

fn valid_bootstrap_request() -> Vec<u8> {
    let request = BootstrapRequest {
        version: BOOTSTRAP_VERSION,
        cluster: "spoke-a".into(),
        token: Some("abcdef.0123456789abcdef".into()),
        csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n".into(),
        resume: Some("tether-spoke-a-0a1b2c3d".into()),
    };
    let mut out = BytesMut::new();
    request.encode(&mut out);
    out.to_vec()
}

fn valid_bootstrap_responses() -> Vec<u8> {
    let mut out = BytesMut::new();
    for r in [
        BootstrapResponse::Pending { csr_name: "tether-spoke-a-0a1b2c3d".into() },
        BootstrapResponse::Issued { certificate_pem: "-----BEGIN CERTIFICATE-----\n".into() },
        BootstrapResponse::Refused { reason: "bootstrap token expired".into() },
    ] {
        r.encode(&mut out);
    }
    out.to_vec()
}

/// True if `input` starts with a whole valid request, which must re-encode to exactly its bytes.
fn check_bootstrap_request(input: &[u8]) -> bool {
    let Ok(Some((request, consumed))) = BootstrapRequest::decode(input) else {
        return false;
    };
    let mut again = BytesMut::new();
    request.encode(&mut again);
    assert_eq!(&again[..], &input[..consumed], "encoding is canonical");
    true
}

/// Feeds `input` to a response decoder in random pieces; returns how many responses decoded.
fn check_bootstrap_responses(rng: &mut Rng, input: &[u8]) -> usize {
    let mut decoded = 0;
    let mut decoder = ResponseDecoder::new();
    let mut rest = input;
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(1 + rng.below(rest.len()));
        rest = tail;
        decoder.push(piece);
        loop {
            match decoder.next_response() {
                Ok(Some(response)) => {
                    let mut again = BytesMut::new();
                    response.encode(&mut again);
                    assert_eq!(BootstrapResponse::decode(&again), Ok(Some((response, again.len()))));
                    decoded += 1;
                }
                Ok(None) => break,
                Err(_) => {
                    assert!(decoder.next_response().is_err(), "errors are sticky");
                    return decoded;
                }
            }
        }
    }
    decoded
}

#[test]
fn bootstrap_decoders_survive_garbage() {
    let mut rng = Rng(0x7e7e_0004);
    let request = valid_bootstrap_request();
    let responses = valid_bootstrap_responses();
    let (mut requests, mut decoded_responses) = (0, 0);
    for i in 0..CASES {
        let input = match i % 3 {
            0 => rng.bytes(96),
            1 => rng.mutate(if i % 2 == 0 { &request } else { &responses }),
            _ => {
                let mut input = vec![0, 0, 0, 1 + rng.below(40) as u8, 0x10 + rng.below(4) as u8];
                input.extend(rng.bytes(48));
                input
            }
        };
        requests += usize::from(check_bootstrap_request(&input));
        decoded_responses += check_bootstrap_responses(&mut rng, &input);
    }
    assert!(requests > CASES / 50, "only {requests} requests decoded");
    assert!(decoded_responses > CASES / 20, "only {decoded_responses} responses decoded");
}

fn valid_heads() -> Vec<Vec<u8>> {
    let mut headers = http::HeaderMap::new();
    headers.insert("accept", http::HeaderValue::from_static("application/json"));
    headers.append("impersonate-group", http::HeaderValue::from_static("dev"));
    let mut request = BytesMut::new();
    RequestHead {
        method: http::Method::PATCH,
        path_and_query: http::uri::PathAndQuery::from_static("/api/v1/namespaces/a/configmaps/b?fieldManager=x"),
        headers: headers.clone(),
        body: true,
    }
    .encode(&mut request);
    let mut response = BytesMut::new();
    ResponseHead { status: http::StatusCode::OK, headers }.encode(&mut response);
    vec![request.to_vec(), response.to_vec()]
}

#[test]
fn http_head_decoders_survive_garbage() {
    let mut rng = Rng(0x7e7e_0004);
    let valid = valid_heads();
    let mut decoded = 0;
    for i in 0..CASES {
        let input = match i % 2 {
            0 => rng.bytes(96),
            _ => rng.mutate(&valid[i % valid.len()]),
        };
        if let Ok(Some((head, used))) = RequestHead::decode(&input) {
            assert!(used <= input.len());
            let mut again = BytesMut::new();
            head.encode(&mut again);
            assert_eq!(RequestHead::decode(&again), Ok(Some((head, again.len()))), "re-encodes to itself");
            decoded += 1;
        }
        if let Ok(Some((head, used))) = ResponseHead::decode(&input) {
            assert!(used <= input.len());
            let mut again = BytesMut::new();
            head.encode(&mut again);
            assert_eq!(ResponseHead::decode(&again), Ok(Some((head, again.len()))), "re-encodes to itself");
            decoded += 1;
        }
    }
    assert!(decoded > CASES / 20, "only {decoded} inputs decoded");
}
