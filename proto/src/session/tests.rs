use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::pair::{Pair, CLIENT_VERSION, CLUSTER, INSTANCE};
use super::*;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn frame(message: ControlMessage) -> BytesMut {
    let mut out = BytesMut::new();
    message.encode(&mut out);
    out
}

fn server(now: Instant) -> Session {
    let role = Role::Server { cluster: CLUSTER.into(), heartbeat_interval: 10 * SEC };
    Session::new(role, SessionConfig::default(), now)
}

fn client(now: Instant) -> Session {
    let role = Role::Client { client_version: CLIENT_VERSION.into(), instance: INSTANCE.into() };
    Session::new(role, SessionConfig::default(), now)
}

fn hello(version: u16) -> BytesMut {
    frame(ControlMessage::Hello { version, client_version: CLIENT_VERSION.into(), instance: INSTANCE.into() })
}

fn welcome(version: u16, heartbeat_interval_ms: u32) -> BytesMut {
    frame(ControlMessage::Welcome { version, cluster: CLUSTER.into(), heartbeat_interval_ms })
}

fn established(peer_instance: Option<&str>) -> Event {
    Event::Established {
        cluster: CLUSTER.into(),
        peer_version: PROTOCOL_VERSION,
        peer_instance: peer_instance.map(Into::into),
    }
}

#[test]
fn handshake_establishes_both_ends() {
    let mut pair = Pair::new(10 * MS);
    assert!(!pair.client.session.is_established());
    pair.advance(25 * MS);
    let (t0, server_at, client_at) = (pair.start, pair.start + 10 * MS, pair.start + 20 * MS);
    assert_eq!(pair.server.events, [(server_at, established(Some(INSTANCE)))]);
    assert_eq!(pair.client.events, [(client_at, established(None))]);
    assert!(pair.client.session.is_established() && pair.server.session.is_established());
    assert_eq!(pair.server.session.peer_client_version(), Some(CLIENT_VERSION));
    assert_eq!(pair.to_server.log.len(), 1);
    assert_eq!(
        pair.to_client.log,
        [(
            client_at,
            ControlMessage::Welcome {
                version: PROTOCOL_VERSION,
                cluster: CLUSTER.into(),
                heartbeat_interval_ms: 10_000
            }
        )]
    );
    assert!(pair.to_server.log[0].0 > t0);
}

#[test]
fn heartbeats_keep_an_idle_tunnel_alive_for_a_day() {
    let mut pair = Pair::new(40 * MS);
    pair.advance(Duration::from_secs(24 * 3600));
    assert_eq!(pair.client.event_kinds(), [established(None)]);
    assert_eq!(pair.server.event_kinds(), [established(Some(INSTANCE))]);
    assert!(pair.client.error.is_none() && pair.server.error.is_none());
    let pings = pair.to_server.count(|m| matches!(m, ControlMessage::Ping { .. }));
    assert!((8630..=8640).contains(&pings), "{pings} pings");
    // Every client ping is answered, in order, except one still in flight.
    let client_pings: Vec<u64> = pair
        .to_server
        .log
        .iter()
        .filter_map(|(_, m)| match m {
            ControlMessage::Ping { seq } => Some(*seq),
            _ => None,
        })
        .collect();
    let pongs: Vec<u64> = pair
        .to_client
        .log
        .iter()
        .filter_map(|(_, m)| match m {
            ControlMessage::Pong { seq } => Some(*seq),
            _ => None,
        })
        .collect();
    assert!(client_pings.starts_with(&pongs) && client_pings.len() - pongs.len() <= 1);
    assert_eq!(client_pings, (0..client_pings.len() as u64).collect::<Vec<_>>());
}

#[test]
fn welcome_sets_the_client_heartbeat() {
    let client_config = SessionConfig { heartbeat_interval: 60 * SEC, dead_after: 180 * SEC };
    let mut pair = Pair::with(client_config, SessionConfig::default(), 2 * SEC, MS);
    pair.advance(61 * SEC);
    assert_eq!(pair.client.session.heartbeat_interval(), 2 * SEC);
    let pings = pair.to_server.count(|m| matches!(m, ControlMessage::Ping { .. }));
    assert_eq!(pings, 30);
}

#[test]
fn a_zero_welcome_interval_keeps_the_client_default() {
    let now = Instant::now();
    let mut c = client(now);
    c.handle_input(now, &welcome(PROTOCOL_VERSION, 0)).expect("welcome");
    assert_eq!(c.heartbeat_interval(), SessionConfig::default().heartbeat_interval);
    assert_eq!(c.poll_timeout(), Some(now + c.heartbeat_interval()));
}

#[test]
fn a_silent_peer_is_declared_dead_once() {
    let mut pair = Pair::new(20 * MS);
    pair.advance(95 * SEC);
    let silenced = pair.now;
    pair.to_client.blocked = true;
    pair.advance(300 * SEC);

    let dead: Vec<Instant> = pair.client.events.iter().filter(|(_, e)| *e == Event::Dead).map(|(at, _)| *at).collect();
    assert_eq!(dead.len(), 1, "{:?}", pair.client.events);
    let after = dead[0] - silenced;
    assert!(after > 20 * SEC && after <= 30 * SEC, "dead after {after:?}");
    assert!(pair.client.session.is_dead());
    assert_eq!(pair.client.session.poll_timeout(), None);
    // A dead client stops pinging, so the hub loses it too, later.
    let hub_dead: Vec<Instant> =
        pair.server.events.iter().filter(|(_, e)| *e == Event::Dead).map(|(at, _)| *at).collect();
    assert_eq!(hub_dead.len(), 1);
    assert!(hub_dead[0] > dead[0]);
}

#[test]
fn a_handshake_that_never_arrives_times_out() {
    let mut pair = Pair::new(MS);
    pair.to_server.blocked = true;
    pair.advance(60 * SEC);
    let dead_after = SessionConfig::default().dead_after;
    assert_eq!(pair.server.events, [(pair.start + dead_after, Event::Dead)]);
    assert_eq!(pair.client.events, [(pair.start + dead_after, Event::Dead)]);
}

#[test]
fn any_received_byte_refreshes_liveness() {
    let start = Instant::now();
    let mut s = server(start);
    let hello = hello(PROTOCOL_VERSION);
    let mut now = start;
    for byte in hello.iter() {
        now += 20 * SEC;
        s.handle_timeout(now);
        s.handle_input(now, &[*byte]).expect("hello byte");
    }
    assert_eq!(s.poll_event(), Some(established(Some(INSTANCE))));
    assert!(!s.is_dead());
    assert!(now - start > 10 * SessionConfig::default().dead_after);
}

#[test]
fn go_away_reaches_the_peer_both_ways() {
    let mut pair = Pair::new(5 * MS);
    pair.advance(SEC);
    pair.server.session.go_away("draining");
    pair.client.session.go_away("shutting down");
    pair.advance(SEC);
    let reason = |r: &str| Event::GoAway { reason: r.into() };
    assert_eq!(pair.client.event_kinds(), [established(None), reason("draining")]);
    assert_eq!(pair.server.event_kinds(), [established(Some(INSTANCE)), reason("shutting down")]);
    // The tunnel stays usable while in-flight requests finish.
    pair.advance(60 * SEC);
    assert!(pair.client.error.is_none() && !pair.client.session.is_dead());
}

#[test]
fn a_hub_go_away_before_hello_follows_the_welcome() {
    let mut pair = Pair::new(10 * MS);
    pair.server.session.go_away("draining");
    pair.advance(SEC);
    assert_eq!(pair.client.error, None);
    assert_eq!(pair.client.event_kinds(), [established(None), Event::GoAway { reason: "draining".into() }]);
    let kinds: Vec<&str> = pair.to_client.log.iter().map(|(_, m)| m.name()).collect();
    assert_eq!(kinds, ["Welcome", "GoAway"]);
}

#[test]
fn a_long_go_away_reason_is_cut_on_a_character_boundary() {
    let mut pair = Pair::new(MS);
    pair.advance(SEC);
    let reason = format!("x{}", "é".repeat(MAX_STRING_LEN));
    pair.server.session.go_away(&reason);
    pair.advance(SEC);
    assert_eq!(pair.client.error, None);
    let Some((_, Event::GoAway { reason: got })) = pair.client.events.last() else {
        panic!("no GoAway: {:?}", pair.client.events);
    };
    assert_eq!(got.len(), MAX_STRING_LEN - 1);
    assert!(reason.starts_with(got.as_str()));
}

#[test]
fn byte_by_byte_delivery_behaves_the_same() {
    let mut pair = Pair::new(3 * MS);
    pair.to_server.chunk = 1;
    pair.to_client.chunk = 1;
    pair.advance(120 * SEC);
    pair.server.session.go_away("draining");
    pair.advance(SEC);
    assert_eq!(pair.server.error, None);
    assert_eq!(pair.client.error, None);
    assert_eq!(pair.server.event_kinds(), [established(Some(INSTANCE))]);
    assert_eq!(pair.client.event_kinds(), [established(None), Event::GoAway { reason: "draining".into() }]);
    assert_eq!(pair.to_client.count(|m| matches!(m, ControlMessage::Pong { .. })), 12);
}

#[test]
fn slow_hub_heartbeats_raise_dead_after() {
    let config = SessionConfig { heartbeat_interval: 10 * SEC, dead_after: 30 * SEC };
    let mut pair = Pair::with(config.clone(), config, 60 * SEC, 50 * MS);
    pair.advance(Duration::from_secs(3600));
    assert_eq!(pair.client.event_kinds(), [established(None)]);
    assert_eq!(pair.server.event_kinds(), [established(Some(INSTANCE))]);
}

#[test]
fn another_major_version_is_a_protocol_error() {
    let now = Instant::now();
    let mut s = server(now);
    let expected = Error::VersionMismatch { ours: PROTOCOL_VERSION, theirs: 1 };
    assert_eq!(s.handle_input(now, &hello(1)), Err(expected.clone()));
    let text = expected.to_string();
    assert!(text.contains("tether/2") && text.contains("tether/1"), "{text}");
    // The session stays failed, and never welcomed the client.
    assert_eq!(s.handle_input(now, &hello(PROTOCOL_VERSION)), Err(expected));
    assert!(!s.is_established());
    assert_eq!(s.poll_transmit(), None);

    let mut c = client(now);
    assert_eq!(
        c.handle_input(now, &welcome(7, 1000)),
        Err(Error::VersionMismatch { ours: PROTOCOL_VERSION, theirs: 7 })
    );
}

#[test]
fn messages_out_of_place_are_protocol_errors() {
    let now = Instant::now();
    let unexpected = |message, state| Err(Error::UnexpectedMessage { message, state });
    let ping = frame(ControlMessage::Ping { seq: 1 });
    let pong = frame(ControlMessage::Pong { seq: 1 });
    let go_away = frame(ControlMessage::GoAway { reason: "bye".into() });

    for (bytes, name) in [(&ping, "Ping"), (&pong, "Pong"), (&go_away, "GoAway")] {
        assert_eq!(server(now).handle_input(now, bytes), unexpected(name, "before Hello"));
        assert_eq!(client(now).handle_input(now, bytes), unexpected(name, "before Welcome"));
    }
    let welcome = welcome(PROTOCOL_VERSION, 1000);
    assert_eq!(server(now).handle_input(now, &welcome), unexpected("Welcome", "sent to the hub"));
    let hello = hello(PROTOCOL_VERSION);
    assert_eq!(client(now).handle_input(now, &hello), unexpected("Hello", "sent to the client"));

    let mut s = server(now);
    s.handle_input(now, &hello).expect("first hello");
    assert_eq!(s.handle_input(now, &hello), unexpected("Hello", "after the handshake"));
    let mut c = client(now);
    c.handle_input(now, &welcome).expect("first welcome");
    assert_eq!(c.handle_input(now, &welcome), unexpected("Welcome", "after the handshake"));
}

#[test]
fn a_bad_frame_is_a_protocol_error() {
    let now = Instant::now();
    assert_eq!(server(now).handle_input(now, &[0, 0, 0, 0]), Err(Error::EmptyFrame));
    let huge = u32::try_from(MAX_CONTROL_FRAME + 1).expect("fits").to_be_bytes();
    assert!(matches!(client(now).handle_input(now, &huge), Err(Error::FrameTooLarge { .. })));
}

#[test]
fn a_client_queues_hello_at_creation() {
    let now = Instant::now();
    let mut c = client(now);
    assert_eq!(c.poll_transmit().as_deref(), Some(&hello(PROTOCOL_VERSION)[..]));
    assert_eq!(c.poll_transmit(), None);
    assert_eq!(server(now).poll_transmit(), None);
    // Before the handshake only the liveness deadline is pending.
    assert_eq!(c.poll_timeout(), Some(now + SessionConfig::default().dead_after));
}

#[test]
fn spoke_info_sent_before_welcome_reaches_the_hub_after_hello() {
    let mut pair = Pair::new(5 * MS);
    pair.client.session.send_spoke_info("v1.20.2", "-----BEGIN CERTIFICATE-----\n");
    pair.advance(SEC);
    let info =
        Event::SpokeInfo { apiserver_version: "v1.20.2".into(), ca_bundle: "-----BEGIN CERTIFICATE-----\n".into() };
    assert_eq!(pair.server.error, None);
    assert_eq!(pair.server.event_kinds(), [established(Some(INSTANCE)), info]);
    // Clients never see it, and a hub never sends it.
    pair.server.session.send_spoke_info("v9", "");
    pair.advance(SEC);
    assert_eq!(pair.client.error, None);
    assert_eq!(pair.client.event_kinds(), [established(None)]);
}

#[test]
fn an_oversized_ca_bundle_is_sent_as_unknown() {
    let mut pair = Pair::new(MS);
    pair.advance(SEC);
    pair.client.session.send_spoke_info(&"v".repeat(MAX_STRING_LEN + 5), &"x".repeat(MAX_PEM_LEN + 1));
    pair.advance(SEC);
    assert_eq!(pair.server.error, None);
    let Some((_, Event::SpokeInfo { apiserver_version, ca_bundle })) = pair.server.events.last() else {
        panic!("no SpokeInfo: {:?}", pair.server.events);
    };
    assert_eq!(apiserver_version.len(), MAX_STRING_LEN);
    assert!(ca_bundle.is_empty());
}

#[test]
fn spoke_info_to_a_client_or_before_hello_is_a_protocol_error() {
    let now = Instant::now();
    let info = frame(ControlMessage::SpokeInfo { apiserver_version: "v1".into(), ca_bundle: String::new() });
    let unexpected = |state| Err(Error::UnexpectedMessage { message: "SpokeInfo", state });
    assert_eq!(server(now).handle_input(now, &info), unexpected("before Hello"));
    let mut c = client(now);
    c.handle_input(now, &welcome(PROTOCOL_VERSION, 1000)).expect("welcome");
    assert_eq!(c.handle_input(now, &info), unexpected("after the handshake"));
}
