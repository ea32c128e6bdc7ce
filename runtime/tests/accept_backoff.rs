//! Out of file descriptors, a listener's accept fails while the connection waits in the backlog, so the
//! listener stays readable: without a pause the loop spins (and logs) as fast as it can. Its own process
//! (this file is one test binary with one test), since it lowers the descriptor limit.
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use tether_runtime::listener::{serve_https, Https, Limits, MetricNames};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

const NAMES: MetricNames = MetricNames {
    connections: "test_connections",
    refused: "test_refused_total",
    handshake_failures: "test_handshake_failures_total",
    closed: "test_closed_total",
    accept_errors: "test_accept_errors_total",
};

fn accept_errors(metrics: &metrics_exporter_prometheus::PrometheusHandle) -> u64 {
    let page = metrics.render();
    let line = page.lines().find(|l| l.starts_with(NAMES.accept_errors));
    line.and_then(|l| l.rsplit(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn accept_backs_off_while_out_of_descriptors_and_recovers() {
    tether_runtime::tls::install_crypto_provider();
    let metrics = tether_runtime::telemetry::install_metrics().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let connector = TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth(),
    ));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let https = Https {
        name: "test",
        limits: Limits::ops(),
        metrics: Some(NAMES),
        refusal: || Response::new(Full::new(Bytes::new())),
    };
    let server = tokio::spawn(serve_https(https, listener, Arc::new(tls), shutdown.clone(), |_, _| {
        hyper::service::service_fn(|_| async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) })
    }));
    // Let the accept loop start and wait on the listener.
    tokio::task::yield_now().await;

    // Without awaiting (this runtime has one thread, so the server cannot run meanwhile): a connection in
    // the backlog, then every descriptor left taken, under a limit lowered to make that quick.
    let client = std::net::TcpStream::connect(addr).unwrap();
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    let original = limit;
    let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    limit.rlim_cur = limit.rlim_cur.min(open_now + 64);
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let mut hogs = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => hogs.push(file),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("{e}"),
        }
    }

    // Six failed accepts take at least 5 + 10 + 20 + 40 + 80 ms of pauses; a spinning loop takes
    // microseconds (and would have counted thousands by then).
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    while accept_errors(&metrics) < 6 {
        assert!(Instant::now() < deadline, "accept never failed: {}", metrics.render());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let errors = accept_errors(&metrics);
    assert!(elapsed >= Duration::from_millis(150), "{errors} failed accepts in {elapsed:?}: no backoff");
    assert!(errors < 20, "{errors} failed accepts in {elapsed:?}");

    // Descriptors back: the waiting connection is accepted and served.
    drop(hogs);
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &original) }, 0);
    client.set_nonblocking(true).unwrap();
    let tcp = tokio::net::TcpStream::from_std(client).unwrap();
    let mut tls = tokio::time::timeout(
        Duration::from_secs(10),
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("the waiting connection is accepted once descriptors are back")
    .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await.unwrap().ok();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    shutdown.cancel();
    server.await.unwrap();
}
