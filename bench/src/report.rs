//! What every run leaves behind: a table on the terminal and a JSON file
//! under the output directory, stamped with the machine it ran on.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::load::StepResult;

/// The machine, as the README should name it.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let virtualized = field("flags").is_some_and(|f| f.split(' ').any(|x| x == "hypervisor"));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .ok();
    json!({
        // Not available_parallelism: that is 1 once the generator pinned itself.
        "cores": cpuinfo.lines().filter(|l| l.starts_with("processor")).count(),
        "cpu_model": field("model name"),
        "cpu_family": field("cpu family"),
        "cpu_model_number": field("model"),
        "cpu_mhz": field("cpu MHz"),
        "virtual_machine": virtualized,
        "kernel": kernel,
        "memory_kib": meminfo_total(),
    })
}

fn meminfo_total() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One line naming the machine for the terminal.
pub fn machine_line(machine: &Value) -> String {
    format!(
        "machine: {} cores, {} (family {}, model {}){}, kernel {}",
        machine["cores"],
        machine["cpu_model"].as_str().unwrap_or("unknown CPU"),
        machine["cpu_family"].as_str().unwrap_or("?"),
        machine["cpu_model_number"].as_str().unwrap_or("?"),
        if machine["virtual_machine"] == true {
            ", virtual machine"
        } else {
            ""
        },
        machine["kernel"].as_str().unwrap_or("?"),
    )
}

/// Writes `body` with the run's context to `DIR/KIND-UNIXTIME-NONCE.json`.
pub fn write_json(out: &Path, kind: &str, pinned: bool, body: Value) -> Result<PathBuf, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = out.join(format!("{kind}-{now}-{}.json", crate::nonce()));
    let document = json!({
        "tool": "parlor-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "kind": kind,
        "command": std::env::args().collect::<Vec<_>>(),
        "unix_time": now,
        "machine": machine(),
        "pinned": pinned,
        "result": body,
    });
    let text = serde_json::to_string_pretty(&document).expect("BUG: JSON values serialize");
    std::fs::write(&path, text + "\n")
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

fn mb(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// The full table of one fan-out step.
pub fn print_step(title: &str, r: &StepResult) {
    println!("{title}");
    println!(
        "  sent {} messages at {:.0}/s for {:.0} s{}",
        r.sent,
        r.rate,
        r.duration.as_secs_f64(),
        if r.send_failures > 0 {
            format!(" ({} sends failed)", r.send_failures)
        } else {
            String::new()
        }
    );
    println!("                 expected   received  duplicated       lost");
    println!(
        "  deliveries   {:>10} {:>10}  {:>10} {:>10}",
        r.expected, r.received, r.duplicated, r.lost
    );
    if r.acks_expected > 0 {
        println!(
            "  acks         {:>10} {:>10}  {:>10} {:>10}",
            r.acks_expected,
            r.acks,
            r.ack_duplicates,
            r.acks_expected.saturating_sub(r.acks)
        );
    }
    println!("  latency (ms)      p50      p90      p99    p99.9      max");
    let row = |label: &str, s: crate::stats::Summary| {
        println!(
            "  {label:<12} {:8.3} {:8.3} {:8.3} {:8.3} {:8.3}",
            s.p50, s.p90, s.p99, s.p999, s.max
        );
    };
    row("delivery", r.delivery);
    if r.acks_expected > 0 {
        row("ack", r.ack);
    }
    row("(send lag)", r.send_lag);
    println!(
        "  throughput   {:.0} deliveries/s (scheduler lag at worst {:.1} ms)",
        r.deliveries_per_s, r.scheduler_max_lag_ms
    );
    if let Some(cpu) = r.server_cpu_s {
        println!(
            "  server       {:.2} CPU s ({}/1M deliveries), RSS {} (peak {})",
            cpu,
            r.cpu_per_million()
                .map_or("-".into(), |c| format!("{c:.2} CPU s")),
            mb(r.server_rss_kib),
            mb(r.server_peak_kib)
        );
    }
    if let Some(cpu) = r.generator_cpu_s {
        println!(
            "  generator    {:.2} CPU s ({:.0} % of one core)",
            cpu,
            cpu / r.duration.as_secs_f64() * 100.0
        );
    }
    if let Some(other) = r.other_cpu_s {
        println!(
            "  others       {:.2} CPU s used meanwhile by other processes and interrupts{}",
            other,
            // Interrupts for the benchmark's own traffic and disk writes
            // take about a tenth of a core; more is somebody else.
            if other > 0.25 * r.duration.as_secs_f64() {
                " (a noisy neighbour: rerun when the machine is quiet)"
            } else {
                ""
            }
        );
    }
    if !r.errors.is_empty() {
        println!("  errors       {:?}", r.errors);
    }
    if !r.disconnected.is_empty() {
        println!(
            "  disconnected {} (first: {})",
            r.disconnected.len(),
            r.disconnected[0]
        );
    }
    if let Some(stall) = &r.stall {
        println!("  stalled client: {stall}");
    }
}

/// One line per sweep step.
pub fn print_sweep_header() {
    println!(
        "  {:>9} {:>11} {:>9} {:>9} {:>9} {:>9} {:>6} {:>8} {:>6} {:>7} {:>7}",
        "msgs/s",
        "deliv/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "ack p99",
        "lost",
        "CPU/1M",
        "gen",
        "others",
        "result"
    );
}

pub fn print_sweep_step(r: &StepResult, pass: bool) {
    println!(
        "  {:>9.0} {:>11.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>6} {:>8} {:>6} {:>7} {:>7}",
        r.rate,
        r.deliveries_per_s,
        r.delivery.p50,
        r.delivery.p99,
        r.delivery.max,
        r.ack.p99,
        r.lost,
        r.cpu_per_million()
            .map_or("-".into(), |c| format!("{c:.2}")),
        r.generator_cpu_s.map_or("-".into(), |c| format!(
            "{:.0}%",
            c / r.duration.as_secs_f64() * 100.0
        )),
        r.other_cpu_s.map_or("-".into(), |c| format!(
            "{:.0}%",
            c / r.duration.as_secs_f64() * 100.0
        )),
        if pass { "pass" } else { "FAIL" }
    );
}
