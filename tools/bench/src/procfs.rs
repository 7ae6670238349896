//! CPU time and memory of the processes under test, from `/proc`.
//!
//! A process is counted with all its descendants (LiteLLM and uvicorn may fork workers).

use std::collections::HashMap;

/// Clock ticks per second of `/proc/PID/stat` times (USER_HZ: 100 on every mainstream Linux).
pub const CLK_TCK: u64 = 100;

/// `(ppid, utime + stime)` of one process, from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// `pid` and all its descendants that are alive now.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parent: HashMap<u32, u32> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                && let Some((pp, _)) = stat(p)
            {
                parent.insert(p, pp);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        for (&p, &pp) in &parent {
            if pp == cur && !out.contains(&p) {
                out.push(p);
            }
        }
        i += 1;
    }
    out.retain(|p| parent.contains_key(p));
    out
}

/// CPU time (user + system) of the processes, in clock ticks.
pub fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| stat(p)).map(|(_, t)| t).sum()
}

fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resident set size of the processes, in KiB.
pub fn rss_kb(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| status_kb(p, "VmRSS:")).sum()
}

/// Peak resident set size (VmHWM) of the processes, in KiB.
pub fn hwm_kb(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| status_kb(p, "VmHWM:")).sum()
}

/// Threads of the processes.
pub fn threads(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| status_kb(p, "Threads:")).sum()
}
