//! What a subcommand prints: a table of rows and the goals it was measured against, or the same as JSON;
//! and a progress line on stderr while it runs.
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Map, Value};

use crate::Common;

pub struct Report {
    pub command: &'static str,
    pub rows: Vec<Row>,
    pub goals: Vec<Goal>,
    /// What a reader needs to interpret the numbers (sizes, counts, what was compared).
    pub notes: Vec<String>,
    /// Indices into `rows` where a table of its own begins in the text output (see [`Report::new_table`]).
    tables: Vec<usize>,
}

impl Report {
    pub fn new(command: &'static str) -> Self {
        Self { command, rows: Vec::new(), goals: Vec::new(), notes: Vec::new(), tables: Vec::new() }
    }

    /// Rows pushed from now on print as a table of their own: a subcommand that measures unlike things
    /// (rates, latencies, memory) would otherwise print one wide table, mostly empty cells. The JSON keeps
    /// one list of rows.
    pub fn new_table(&mut self) {
        self.tables.push(self.rows.len());
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// A goal `measured` must meet: at most `limit` when `at_most`, else at least.
    pub fn goal(&mut self, what: impl Into<String>, measured: f64, at_most: bool, limit: f64, unit: &str) {
        let met = measured.is_finite() && if at_most { measured <= limit } else { measured >= limit };
        let sign = if at_most { "≤" } else { "≥" };
        self.goals.push(Goal {
            what: what.into(),
            target: format!("{sign} {}{unit}", trim(limit)),
            measured: format!("{}{unit}", trim(measured)),
            met,
        });
    }

    fn to_json(&self) -> Value {
        let rows: Vec<Value> = self.rows.iter().map(Row::to_json).collect();
        let goals: Vec<Value> = self
            .goals
            .iter()
            .map(|g| json!({ "goal": g.what, "target": g.target, "measured": g.measured, "met": g.met }))
            .collect();
        json!({
            "command": self.command,
            "date": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            "machine": machine(),
            "rows": rows,
            "goals": goals,
            "notes": self.notes,
        })
    }

    fn to_table(&self) -> String {
        let mut bounds: Vec<usize> = self.tables.iter().copied().filter(|&i| i > 0 && i < self.rows.len()).collect();
        bounds.dedup();
        let mut text = String::new();
        let mut start = 0;
        for end in bounds.into_iter().chain([self.rows.len()]) {
            if start > 0 {
                text.push('\n');
            }
            text.push_str(&table(&self.rows[start..end]));
            start = end;
        }
        for goal in &self.goals {
            let mark = if goal.met { "met" } else { "NOT met" };
            text.push_str(&format!("goal {}: {} (measured {}) {mark}\n", goal.what, goal.target, goal.measured));
        }
        for note in &self.notes {
            text.push_str(&format!("note: {note}\n"));
        }
        text
    }
}

/// The rows as one table whose columns are every column any of them has, in order of appearance.
fn table(rows: &[Row]) -> String {
    let mut columns: Vec<&str> = Vec::new();
    for row in rows {
        for (name, _) in &row.cells {
            if !columns.contains(name) {
                columns.push(name);
            }
        }
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::ASCII_MARKDOWN).set_header(columns.clone());
    for row in rows {
        table.add_row(columns.iter().map(|c| row.display(c)));
    }
    format!("{table}\n")
}

pub struct Goal {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

/// One line of a table: named cells in column order.
#[derive(Default)]
pub struct Row {
    cells: Vec<(&'static str, Cell)>,
}

enum Cell {
    Text(String),
    Number { value: f64, decimals: usize },
}

impl Row {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn text(mut self, column: &'static str, value: impl Into<String>) -> Self {
        self.cells.push((column, Cell::Text(value.into())));
        self
    }

    pub fn num(mut self, column: &'static str, value: f64, decimals: usize) -> Self {
        self.cells.push((column, Cell::Number { value, decimals }));
        self
    }

    pub fn get(&self, column: &str) -> Option<f64> {
        self.cells.iter().find(|(c, _)| *c == column).and_then(|(_, cell)| match cell {
            Cell::Number { value, .. } => Some(*value),
            Cell::Text(_) => None,
        })
    }

    pub fn get_text(&self, column: &str) -> Option<&str> {
        self.cells.iter().find(|(c, _)| *c == column).and_then(|(_, cell)| match cell {
            Cell::Text(t) => Some(t.as_str()),
            Cell::Number { .. } => None,
        })
    }

    fn display(&self, column: &str) -> String {
        match self.cells.iter().find(|(c, _)| *c == column).map(|(_, cell)| cell) {
            Some(Cell::Text(t)) => t.clone(),
            Some(Cell::Number { value, decimals }) if value.is_finite() => format!("{value:.decimals$}"),
            Some(Cell::Number { .. }) | None => "-".into(),
        }
    }

    fn to_json(&self) -> Value {
        let mut map = Map::new();
        for (column, cell) in &self.cells {
            let value = match cell {
                Cell::Text(t) => Value::from(t.as_str()),
                // NaN (not measured) becomes null.
                Cell::Number { value, .. } => serde_json::Number::from_f64(*value).map_or(Value::Null, Value::Number),
            };
            map.insert(column.to_string(), value);
        }
        Value::Object(map)
    }
}

fn trim(v: f64) -> String {
    // Whole numbers and large ones need no decimals.
    if (v.is_finite() && v.fract() == 0.0) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// CPUs, CPU model and kernel: numbers are only comparable on like machines.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()))
        .unwrap_or_default();
    let memory_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines().find_map(|l| l.strip_prefix("MemTotal:")?.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": model,
        "memory_gib": memory_kib.map(|k| (k as f64 / 1024.0 / 1024.0).round()),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

/// Prints the report as asked; the error of a failed run passes through.
pub fn finish(common: &Common, report: anyhow::Result<Report>) -> anyhow::Result<()> {
    let report = report?;
    if common.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        let machine = machine();
        println!(
            "{} on {} CPUs ({}), {}",
            report.command,
            machine["cpus"],
            machine["cpu_model"].as_str().unwrap_or("?"),
            humantime::format_rfc3339_seconds(SystemTime::now())
        );
        print!("{}", report.to_table());
    }
    Ok(())
}

/// One line on stderr saying where a long run is: rewritten in place on a terminal, a line every few
/// seconds otherwise (CI logs).
pub struct Progress {
    terminal: bool,
    /// When the last line was printed, and its phase (the text before its first colon).
    last: Mutex<Option<(Instant, String)>>,
    started: Instant,
}

impl Progress {
    pub fn new() -> Self {
        Self { terminal: std::io::stderr().is_terminal(), last: Mutex::new(None), started: Instant::now() }
    }

    /// Prints `message` unless a line of the same phase was printed less than a moment ago; a new phase
    /// ("tether: ..." after "direct: ...") always prints, so scripts can tell when it began.
    pub fn update(&self, message: impl AsRef<str>) {
        let every = if self.terminal { Duration::from_millis(200) } else { Duration::from_secs(5) };
        let phase = message.as_ref().split(':').next().unwrap_or_default();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref().is_some_and(|(t, last_phase)| t.elapsed() < every && last_phase == phase) {
            return;
        }
        *last = Some((Instant::now(), phase.to_string()));
        let line = format!("[{:>5.1}s] {}", self.started.elapsed().as_secs_f64(), message.as_ref());
        if self.terminal {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }

    /// Clears the line before the table is printed.
    pub fn done(&self) {
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}
