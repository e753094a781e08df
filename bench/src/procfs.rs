//! What the bench reads from `/proc`: a process's CPU time and memory, the host's busy CPU
//! time, the load average, the processes running a binary, and the machine (CPU model,
//! memory, kernel). Parsers are pure functions over the file's text, tested below.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

/// A process's memory, from `/proc/PID/smaps_rollup`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Proportional set size (shared pages divided among their users), KiB.
    pub pss_kib: u64,
}

/// `utime + stime` of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_cpu(&text).with_context(|| format!("parsing {path}"))
}

/// `utime + stime` from the text of `/proc/PID/stat`.
fn parse_stat_cpu(text: &str) -> anyhow::Result<u64> {
    // The command name (field 2) may hold spaces and parentheses: count from its last `)`.
    let (_, rest) = text
        .rsplit_once(')')
        .context("no `)` after the command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let field = |n: usize| -> anyhow::Result<u64> {
        let value = fields.get(n - 3).with_context(|| format!("no field {n}"))?;
        value
            .parse()
            .with_context(|| format!("field {n} is {value:?}, not a number"))
    };
    Ok(field(14)? + field(15)?)
}

/// Clock ticks per second, the unit of `/proc` CPU times (`sysconf(_SC_CLK_TCK)`, asked of
/// `getconf`; Linux's USER_HZ is 100 everywhere it runs, the fallback).
pub fn clock_ticks_per_second() -> u64 {
    marrow_tests::command::capture(Command::new("getconf").arg("CLK_TCK"))
        .ok()
        .flatten()
        .and_then(|out| out.trim().parse().ok())
        .filter(|&hz| hz > 0)
        .unwrap_or(100)
}

/// Busy CPU ticks of the whole host, summed over CPUs (everything but idle and iowait), from
/// `/proc/stat`: the senders, receivers, proxies and the kernel's network stack together.
pub fn host_busy_ticks() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_host_busy(&text).context("parsing /proc/stat")
}

/// Busy ticks from the text of `/proc/stat`.
fn parse_host_busy(text: &str) -> anyhow::Result<u64> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no aggregate `cpu` line")?;
    let values = line
        .split_whitespace()
        .skip(1)
        .map(str::parse::<u64>)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("non-numeric value in {line:?}"))?;
    if values.len() < 8 {
        bail!("expected at least 8 values in {line:?}");
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guests are already
    // counted in user and nice.
    let (idle, iowait) = (values[3], values[4]);
    Ok(values[..8].iter().sum::<u64>() - idle - iowait)
}

/// RSS and PSS of `pid`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(Memory {
        rss_kib: kib_field(&text, "Rss:").with_context(|| format!("parsing {path}"))?,
        pss_kib: kib_field(&text, "Pss:").with_context(|| format!("parsing {path}"))?,
    })
}

/// The peak RSS of `pid` (`VmHWM` of `/proc/PID/status`), KiB.
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    kib_field(&text, "VmHWM:").with_context(|| format!("parsing {path}"))
}

/// The value of a `Name:   1234 kB` line.
fn kib_field(text: &str, name: &str) -> anyhow::Result<u64> {
    let line = text
        .lines()
        .find(|l| l.starts_with(name))
        .with_context(|| format!("no {name} line"))?;
    let mut words = line[name.len()..].split_whitespace();
    match (words.next().map(str::parse::<u64>), words.next()) {
        (Some(Ok(value)), Some("kB")) => Ok(value),
        _ => bail!("unexpected line {line:?}"),
    }
}

/// The limit on open files of `pid` (soft), from `/proc/PID/limits`.
pub fn open_files_limit(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/limits");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .with_context(|| format!("no `Max open files` in {path}"))?;
    let soft = line["Max open files".len()..]
        .split_whitespace()
        .next()
        .unwrap_or_default();
    Ok(soft.parse().unwrap_or(u64::MAX))
}

/// How many descriptors `pid` has open (the entries of `/proc/PID/fd`).
pub fn open_fds(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&path).with_context(|| format!("reading {path}"))?;
    Ok(entries.count() as u64)
}

/// Raises this process's open-files limit (soft and hard) to at least `wanted`, so the
/// processes it starts afterwards inherit it; returns the soft limit in force (unchanged when
/// raising is not permitted: the caller sizes its load by what it gets).
pub fn raise_open_files_limit(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur >= wanted {
            return limit.rlim_cur;
        }
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max.max(wanted),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return wanted;
        }
        // Not root: the hard limit is as far as the soft one may go.
        let soft = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            return limit.rlim_max;
        }
        limit.rlim_cur
    }
}

/// The 1, 5 and 15-minute load averages.
pub fn load_average() -> anyhow::Result<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    parse_loadavg(&text).context("parsing /proc/loadavg")
}

fn parse_loadavg(text: &str) -> anyhow::Result<[f64; 3]> {
    let mut it = text.split_whitespace().map(str::parse::<f64>);
    let mut next = || -> anyhow::Result<f64> { Ok(it.next().context("too few fields")??) };
    Ok([next()?, next()?, next()?])
}

/// The processes whose executable is `exe` (`/proc/PID/exe`), e.g. Envoys left running.
pub fn pids_running(exe: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let want = exe.canonicalize().unwrap_or_else(|_| exe.to_owned());
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|path| path == want))
        .collect()
}

/// The host's CPU, memory and kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// `model name` of `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Logical CPUs in `/proc/cpuinfo`.
    pub cpus: usize,
    /// `MemTotal` of `/proc/meminfo`, KiB.
    pub memory_kib: u64,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
}

/// Reads [`Host`] from `/proc`.
pub fn host() -> anyhow::Result<Host> {
    let read =
        |path: &str| std::fs::read_to_string(path).with_context(|| format!("reading {path}"));
    let (cpu_model, cpus) =
        parse_cpuinfo(&read("/proc/cpuinfo")?).context("parsing /proc/cpuinfo")?;
    Ok(Host {
        cpu_model,
        cpus,
        memory_kib: kib_field(&read("/proc/meminfo")?, "MemTotal:")
            .context("parsing /proc/meminfo")?,
        kernel: read("/proc/sys/kernel/osrelease")?.trim().to_owned(),
    })
}

/// The first `model name` and the number of `processor` entries of `/proc/cpuinfo`.
fn parse_cpuinfo(text: &str) -> anyhow::Result<(String, usize)> {
    let value = |line: &str, key: &str| -> Option<String> {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    };
    let cpus = text
        .lines()
        .filter(|l| value(l, "processor").is_some())
        .count();
    if cpus == 0 {
        bail!("no `processor` entries");
    }
    let model = text
        .lines()
        .find_map(|l| value(l, "model name"))
        .unwrap_or_else(|| "unknown (no `model name`)".to_owned());
    Ok((model, cpus))
}

/// `PRETTY_NAME` of an `os-release` file.
pub fn parse_os_release(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let value = l.strip_prefix("PRETTY_NAME=")?.trim();
        Some(value.trim_matches('"').to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_skips_odd_command_names() {
        let line = "4242 (node) proxy)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu(line).unwrap(), 325);
        assert!(parse_stat_cpu("4242 (x) S 1 2").is_err());
        assert!(parse_stat_cpu("no parenthesis").is_err());
        let bad = "1 (x) S 1 1 1 0 -1 0 0 0 0 0 abc 5 0";
        assert!(parse_stat_cpu(bad).is_err());
    }

    #[test]
    fn host_busy_leaves_out_idle_iowait_and_guests() {
        let text = "cpu  100 5 50 1000 7 3 2 1 40 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_host_busy(text).unwrap(), 161);
        assert!(parse_host_busy("cpu0 1 2 3\n").is_err());
        assert!(parse_host_busy("cpu  1 2 3\n").is_err());
        assert!(parse_host_busy("cpu  1 x 3 4 5 6 7 8\n").is_err());
    }

    #[test]
    fn kib_fields() {
        let rollup =
            "00400000-7ffd [rollup]\nRss:               12288 kB\nPss:                9000 kB\n";
        assert_eq!(kib_field(rollup, "Rss:").unwrap(), 12288);
        assert_eq!(kib_field(rollup, "Pss:").unwrap(), 9000);
        assert!(kib_field(rollup, "Swap:").is_err());
        assert!(kib_field("Rss: 12 MB\n", "Rss:").is_err());
        assert!(kib_field("Rss: x kB\n", "Rss:").is_err());
    }

    #[test]
    fn load_averages() {
        assert_eq!(
            parse_loadavg("0.22 0.54 0.43 1/234 5678\n").unwrap(),
            [0.22, 0.54, 0.43]
        );
        assert!(parse_loadavg("0.1 0.2").is_err());
        assert!(parse_loadavg("a b c").is_err());
    }

    #[test]
    fn machine_files() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\n\
                       processor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(
            parse_cpuinfo(cpuinfo).unwrap(),
            ("AMD EPYC 7B13".to_owned(), 2)
        );
        assert_eq!(parse_cpuinfo("processor : 0\n").unwrap().1, 1);
        assert!(parse_cpuinfo("model name : x\n").is_err());
        let os = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            parse_os_release(os).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(parse_os_release("NAME=x\n"), None);
        let me = std::env::current_exe().unwrap();
        assert!(pids_running(&me).contains(&std::process::id()));
        assert!(pids_running(Path::new("/nonexistent/envoy")).is_empty());
    }
}
