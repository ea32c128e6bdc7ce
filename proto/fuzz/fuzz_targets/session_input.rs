//! `Session::handle_input` and `handle_timeout` on both roles with arbitrary bytes and clock
//! jumps: never panics, timeouts never lie in the past, Dead is reported at most once, and a
//! failed session stays failed.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tether_proto::{Event, Role, Session, SessionConfig};

fuzz_target!(|data: &[u8]| {
    // First byte: bit 0 picks the role. Then records of one control byte, whose low six
    // bits give a piece length (1..=64) and high two bits a clock jump of 0/5/10/15 s,
    // followed by that piece of input.
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let role = if first & 1 == 0 {
        Role::Server {
            cluster: "fuzz".into(),
            heartbeat_interval: Duration::from_secs(5),
        }
    } else {
        Role::Client {
            client_version: "0.0.0".into(),
            instance: "fuzz".into(),
        }
    };
    let config = SessionConfig {
        heartbeat_interval: Duration::from_secs(5),
        dead_after: Duration::from_secs(15),
    };
    let mut now = Instant::now();
    let mut session = Session::new(role, config, now);
    let mut deaths = 0;
    while let Some((&control, tail)) = rest.split_first() {
        let len = usize::from(control & 0x3f) + 1;
        let (piece, tail) = tail.split_at(len.min(tail.len()));
        rest = tail;
        now += Duration::from_secs(5 * u64::from(control >> 6));
        session.handle_timeout(now);
        if let Some(at) = session.poll_timeout() {
            assert!(at > now);
        }
        let failed = session.handle_input(now, piece).is_err();
        while session.poll_transmit().is_some() {}
        while let Some(event) = session.poll_event() {
            deaths += usize::from(event == Event::Dead);
        }
        if failed {
            assert!(session.handle_input(now, b"x").is_err());
            return;
        }
    }
    assert!(deaths <= 1);
});
