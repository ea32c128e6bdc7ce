//! A small run of every subcommand, as CI runs them: each must complete, measure every path it names, and
//! print its JSON. No timing is asserted (CI machines are noisy); memory per tunnel is, loosely, because it
//! is a count of bytes and a regression there is a factor, not a few percent.
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

// One at a time: each run starts its own hub and spoke processes, and two cores are shared.
static SERIAL: Mutex<()> = Mutex::new(());

fn loadtest(args: &[&str]) -> Value {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest")).args(args).arg("--json").output().expect("loadtest runs");
    assert!(
        output.status.success(),
        "loadtest {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or("")
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

fn rows(report: &Value) -> &Vec<Value> {
    report["rows"].as_array().expect("rows")
}

fn row<'a>(report: &'a Value, column: &str, value: &str) -> &'a Value {
    rows(report).iter().find(|r| r[column] == value).unwrap_or_else(|| panic!("no row with {column} = {value}"))
}

#[test]
fn proxy_measures_both_paths_at_each_concurrency() {
    let report = loadtest(&["proxy", "--duration", "300ms", "--warmup", "100ms", "--concurrency", "1,4"]);
    assert_eq!(report["command"], "proxy");
    assert_eq!(rows(&report).len(), 4);
    for r in rows(&report) {
        assert!(r["req/s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["p999 µs"].as_f64().unwrap() >= r["p50 µs"].as_f64().unwrap(), "{r}");
    }
    let tether = rows(&report).iter().find(|r| r["path"] == "tether").unwrap();
    assert!(tether["cpu µs/req"].as_f64().unwrap() > 0.0, "the hub and client did work: {tether}");
    assert_eq!(report["goals"].as_array().unwrap().len(), 2, "no concurrency 64: two goals apply");
    assert!(report["machine"]["cpus"].as_u64().unwrap() >= 1);
}

#[test]
fn bulk_delivers_every_byte_on_both_paths() {
    // A short delivery is an error inside the run; success means both paths delivered all 8 MiB.
    let report = loadtest(&["bulk", "--size", "8MiB", "--repeat", "1"]);
    assert!(row(&report, "path", "direct")["MiB/s"].as_f64().unwrap() > 0.0);
    assert!(row(&report, "path", "tether")["ratio to direct"].as_f64().unwrap() > 0.0);
}

#[test]
fn reconnect_recovers_from_every_kind_of_restart() {
    // Within 15 s: a crashed hub's successor must reset the old connections (a random reset key would leave
    // the client waiting out its 30 s idle timeout).
    let report = loadtest(&["reconnect", "--rounds", "1", "--timeout", "15s"]);
    for event in ["client restart (SIGTERM)", "client crash (SIGKILL)", "hub restart (SIGTERM)", "hub crash (SIGKILL)"]
    {
        assert!(row(&report, "event", event)["median ms"].as_f64().unwrap() > 0.0, "{event}");
    }
}

#[test]
fn tunnels_connects_every_simulated_spoke_and_routes_to_each() {
    let report = loadtest(&["tunnels", "--tunnels", "150", "--duration", "300ms", "--per-socket", "100"]);
    assert_eq!(row(&report, "measure", "tunnels connected")["value"], 150.0);
    assert!(row(&report, "measure", "requests: req/s")["value"].as_f64().unwrap() > 0.0);
    // Measured about 50 KiB; quinn's per-stream state for a large stream credit made it 1.6 MiB once.
    let per_tunnel = row(&report, "measure", "hub RSS per tunnel")["value"].as_f64().unwrap();
    assert!(per_tunnel < 400.0, "hub RSS per tunnel {per_tunnel} KiB");
}

#[test]
fn watches_open_on_both_paths_and_events_arrive_through_the_hub() {
    // More than the 250 streams the apiserver allows on one HTTP/2 connection: the client must open another.
    let report = loadtest(&["watches", "--watches", "300", "--per-connection", "20", "--events", "3"]);
    for path in ["direct", "tether"] {
        assert_eq!(row(&report, "path", path)["watches open"], 300.0, "{path}");
    }
    assert!(row(&report, "path", "event via tether")["event p50 ms"].as_f64().unwrap() > 0.0);
    assert!(row(&report, "path", "event direct")["event p50 ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn kubectl_gets_from_a_real_apiserver_through_the_hub_and_directly() {
    let report = loadtest(&["kubectl", "--requests", "20", "--kubectl-runs", "1"]);
    for r in rows(&report) {
        assert!(r["count"].as_f64().unwrap() >= 1.0, "{r}");
        assert!(r["p50 ms"].as_f64().unwrap() > 0.0, "{r}");
    }
    let requests: Vec<&str> =
        rows(&report).iter().filter(|r| r["path"] == "tether").filter_map(|r| r["request"].as_str()).collect();
    assert!(requests.contains(&"keep-alive GET") && requests.contains(&"GET on a new connection"), "{requests:?}");
}

#[test]
fn push_converges_on_a_real_spoke_corrects_drift_and_reaches_every_simulated_spoke() {
    // Inside the run, a push whose status does not say every cluster applied it, an object that is not
    // restored and a simulated spoke that does not hold every object are errors: success means all happened.
    let report = loadtest(&[
        "push",
        "--manifests",
        "10",
        "--rounds",
        "2",
        "--drift",
        "2",
        "--simulated",
        "30",
        "--simulated-manifests",
        "3",
        "--worker-threads",
        "2",
        "--settle",
        "3s",
    ]);
    assert_eq!(report["command"], "push");
    for path in ["direct", "tether"] {
        let r = row(&report, "converge", path);
        assert_eq!(r["rounds"], 2.0, "{r}");
        assert!(r["p50 ms"].as_f64().unwrap() > 0.0, "{r}");
    }
    for what in ["edit", "delete"] {
        assert_eq!(row(&report, "drift", what)["count"], 1.0, "{what}");
    }
    assert_eq!(row(&report, "at scale", "clusters applied")["value"], 30.0);
    // Discovery, three applies, the drift watch's list and watch: six. A pass that writes everything again
    // (taking its own status write or the watch's first listing for a change) makes nine or more.
    let requests = row(&report, "at scale", "requests per cluster")["value"].as_f64().unwrap();
    assert!((6.0..=7.0).contains(&requests), "requests per cluster: {requests}");
    assert!(row(&report, "at scale", "removing every push")["value"].as_f64().unwrap() > 0.0);
}

/// The network namespaces `loadtest node` names, present now.
fn node_namespaces() -> Vec<String> {
    let entries: Vec<_> = std::fs::read_dir("/run/netns").map(|d| d.flatten().collect()).unwrap_or_default();
    entries
        .iter()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with("tether-loadtest-"))
        .collect()
}

#[test]
fn node_measures_port_forward_exec_and_logs_through_the_hub_and_directly() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let why = "not root, so loadtest node cannot run (a network namespace, containerd and a kubelet need root)";
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{why} (CI=true)");
        eprintln!("SKIPPED: {why}");
        return;
    }
    let before = node_namespaces();
    // A failed or short echo, a byte that did not come back and a stream without a line are errors inside
    // the run: success means every byte was verified on both paths.
    let report = loadtest(&[
        "node",
        "--size",
        "2MiB",
        "--transfers",
        "1",
        "--round-trips",
        "20",
        "--exec-runs",
        "1",
        "--streams",
        "5",
        "--settle",
        "3s",
    ]);
    assert_eq!(report["command"], "node");
    let of = |measure: &str| -> Vec<&Value> { rows(&report).iter().filter(|r| r["measure"] == measure).collect() };
    for (measure, column) in [
        ("port-forward echo", "MB/s each way"),
        ("exec 1-byte round trip", "p50 ms"),
        ("kubectl exec -- true", "p50 ms"),
    ] {
        let paths: Vec<&str> = of(measure).iter().filter_map(|r| r["path"].as_str()).collect();
        assert_eq!(paths, ["direct", "tether"], "{measure}");
        for r in of(measure) {
            assert!(r[column].as_f64().unwrap() > 0.0, "{measure}: {r}");
        }
    }
    for r in of("exec 1-byte round trip") {
        assert_eq!(r["count"], 20.0, "{r}");
    }
    let tether = of("port-forward echo").into_iter().find(|r| r["path"] == "tether").unwrap();
    assert!(tether["hub+client cpu ms/MiB"].as_f64().unwrap() > 0.0, "the hub and client did work: {tether}");
    let processes: Vec<&str> = of("logs -f memory").iter().filter_map(|r| r["process"].as_str()).collect();
    assert_eq!(processes, ["hub", "client", "hub + client", "apiserver", "kubelet"]);
    for r in of("logs -f memory") {
        assert!(r["open MiB"].as_f64().unwrap() > 0.0, "{r}");
    }
    // The run waits for its teardown: the cluster and the namespace are gone when it returns.
    let left: Vec<String> = node_namespaces().into_iter().filter(|n| !before.contains(n)).collect();
    assert!(left.is_empty(), "network namespaces left behind: {left:?}");
}

/// The processes whose parent is `pid`, from /proc.
fn children(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.flatten().collect()).unwrap_or(Vec::new());
    tasks
        .iter()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; only its entry is left until its new parent reaps it.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

/// Kills what is left of a test's processes and removes its directory, pass or fail.
struct Cleanup {
    pids: Vec<u32>,
    dir: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Only a failed test leaves processes; after a pass their ids may already belong to others.
        for pid in self.pids.iter().filter(|_| std::thread::panicking()) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn components_die_with_a_killed_loadtest() {
    use std::time::{Duration, Instant};
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("tether-smoke-killed-{}", std::process::id()));
    let mut run = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["proxy", "--duration", "60s", "--concurrency", "1", "--workdir"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("loadtest starts");
    let mut cleanup = Cleanup { pids: vec![run.id()], dir };
    let deadline = Instant::now() + Duration::from_secs(60);
    // Backend, hub and client.
    let components = loop {
        let components = children(run.id());
        if components.len() >= 3 {
            break components;
        }
        assert!(Instant::now() < deadline, "components not started within 60 s: {components:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    cleanup.pids.extend(&components);
    run.kill().expect("SIGKILL");
    run.wait().expect("reaped");
    while let Some(left) = components.iter().find(|pid| alive(**pid)) {
        assert!(Instant::now() < deadline, "component {left} outlived its killed parent");
        std::thread::sleep(Duration::from_millis(20));
    }
}
