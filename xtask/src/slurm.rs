//! `cargo xtask slurm-up` (also run by `cargo xtask test`): a single-node Slurm on localhost
//! for the executor's tests: Debian's slurm-wlm and munge installed, munged, slurmctld and
//! slurmd started with a minimal configuration (no cgroups, no accounting database), and a
//! wait until the node is idle. Idempotent: an idle node already there is left as it is.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where the daemons keep their state and logs.
const STATE: &str = "/var/tmp/relabel-slurm";

fn idle() -> bool {
    Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("idle"))
        .unwrap_or(false)
}

fn running(name: &str) -> bool {
    Command::new("pgrep")
        .args(["-x", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn start(cmd: &mut Command, what: &str) -> Result<()> {
    let st = cmd.status().with_context(|| format!("starting {what}"))?;
    if !st.success() {
        bail!("{what} did not start ({st}); see {STATE}/log");
    }
    Ok(())
}

pub fn up() -> Result<()> {
    if idle() {
        return Ok(());
    }
    if !Path::new("/usr/sbin/slurmctld").exists() || !Path::new("/usr/sbin/munged").exists() {
        eprintln!("setup: installing Debian's slurm-wlm and munge for the Slurm executor's tests");
        if !(crate::apt_install("slurm-wlm") && crate::apt_install("munge")) {
            bail!("could not install slurm-wlm and munge with apt-get (are we root?)");
        }
    }
    for d in ["/run/munge", "/var/log/munge", "/var/lib/munge"] {
        std::fs::create_dir_all(d)?;
    }
    if !Path::new("/etc/munge/munge.key").exists() {
        start(
            Command::new("/usr/sbin/mungekey").args(["--create"]),
            "mungekey",
        )?;
    }
    start(
        Command::new("chown").args([
            "-R",
            "munge:munge",
            "/run/munge",
            "/var/log/munge",
            "/var/lib/munge",
            "/etc/munge",
        ]),
        "chown",
    )?;
    if !running("munged") {
        start(
            Command::new("su").args(["-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"]),
            "munged",
        )?;
    }
    for d in ["state", "spool", "log"] {
        std::fs::create_dir_all(Path::new(STATE).join(d))?;
    }
    // The node as slurmd sees it (CPUs, memory), so the configuration matches the machine.
    let probe = Command::new("/usr/sbin/slurmd").arg("-C").output()?;
    let probe = String::from_utf8_lossy(&probe.stdout);
    let field = |k: &str| {
        probe
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(String::from)
    };
    let cpus = field("CPUs=").unwrap_or_else(|| "1".into());
    let mem = field("RealMemory=")
        .and_then(|m| m.parse::<u64>().ok())
        .map(|m| m * 9 / 10)
        .unwrap_or(1000);
    let conf = format!(
        "# Written by `cargo xtask slurm-up`: a single-node Slurm for relabel's tests.
ClusterName=relabel
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={STATE}/state
SlurmdSpoolDir={STATE}/spool
SlurmctldPidFile={STATE}/slurmctld.pid
SlurmdPidFile={STATE}/slurmd.pid
SlurmctldLogFile={STATE}/log/slurmctld.log
SlurmdLogFile={STATE}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MinJobAge=600
MpiDefault=none
NodeName=localhost CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"
    );
    std::fs::create_dir_all("/etc/slurm")?;
    std::fs::write("/etc/slurm/slurm.conf", conf)?;
    if !running("slurmctld") {
        start(&mut Command::new("/usr/sbin/slurmctld"), "slurmctld")?;
    }
    if !running("slurmd") {
        start(&mut Command::new("/usr/sbin/slurmd"), "slurmd")?;
    }
    let t0 = Instant::now();
    while !idle() {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("the Slurm node is not idle after 60 s; see {STATE}/log");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("setup: single-node Slurm up (partition debug, {cpus} CPUs)");
    Ok(())
}
