//! What the running kernel offers: each program type is loaded (and LSM run) for real.

use std::path::PathBuf;

use aya::programs::{BtfTracePoint, CgroupSockAddr, FEntry, Lsm, TracePoint};
use aya::{Btf, Ebpf};

use crate::sys;

static SUPPORT_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/support.bpf.o"));

/// One capability: whether it is there, and why (not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub available: bool,
    pub detail: String,
}

impl Check {
    fn yes(detail: impl Into<String>) -> Check {
        Check {
            available: true,
            detail: detail.into(),
        }
    }
    fn no(detail: impl Into<String>) -> Check {
        // aya appends the verifier log even when the kernel refused before verifying.
        let detail: String = detail.into();
        let trimmed = detail.trim_end();
        let detail = match trimmed.strip_suffix("Verifier output:") {
            Some(short) => short.trim_end().trim_end_matches('.').to_owned(),
            None => trimmed.to_owned(),
        };
        Check {
            available: false,
            detail,
        }
    }
}

/// The eBPF facilities of the running kernel.
#[derive(Debug, Clone)]
pub struct Support {
    pub tracepoint: Check,
    pub tp_btf: Check,
    pub cgroup_sock_addr: Check,
    pub ringbuf: Check,
    pub lsm: Check,
    pub fentry: Check,
    pub fmod_ret: Check,
    /// Mount point of the cgroup v2 hierarchy, when there is one.
    pub cgroup2: Option<PathBuf>,
}

fn not_loaded(error: impl std::fmt::Display) -> Check {
    Check::no(format!("the kernel refused the program: {error}"))
}

/// Loads a tiny program of each type and, for BPF LSM, checks that the kernel calls it.
pub fn probe_support() -> Support {
    let cgroup2 = sys::cgroup2_mount();
    let fmod_ret = Check::no(
        "fmod_ret programs are not supported by the loader (aya 0.14 rejects fmod_ret/ sections)",
    );
    let tracefs = sys::ensure_mounted("tracefs", sys::TRACEFS_ROOT, sys::TRACEFS_MAGIC);
    let mut ebpf = match Ebpf::load(SUPPORT_OBJECT) {
        Ok(ebpf) => ebpf,
        Err(error) => {
            let why = Check::no(format!("loading the probe object failed: {error}"));
            return Support {
                tracepoint: why.clone(),
                tp_btf: why.clone(),
                cgroup_sock_addr: why.clone(),
                ringbuf: why.clone(),
                lsm: why.clone(),
                fentry: why,
                fmod_ret,
                cgroup2,
            };
        }
    };
    let btf = Btf::from_sys_fs();

    let tracepoint = match &tracefs {
        Err(error) => Check::no(format!("tracefs unavailable: {error}")),
        Ok(()) => match load_tracepoint(&mut ebpf, "probe_tracepoint", "sys_enter_getpid") {
            Ok(()) => Check::yes("syscall tracepoints load and attach"),
            Err(error) => not_loaded(error),
        },
    };
    let ringbuf = match &tracefs {
        Err(error) => Check::no(format!("tracefs unavailable: {error}")),
        Ok(()) => match load_tracepoint(&mut ebpf, "probe_ringbuf", "sys_enter_getppid") {
            Ok(()) => Check::yes("ring buffer maps are created and used by programs"),
            Err(error) => not_loaded(error),
        },
    };
    let (tp_btf, lsm, fentry) = match &btf {
        Err(error) => {
            let why = Check::no(format!("no kernel BTF (/sys/kernel/btf/vmlinux): {error}"));
            (why.clone(), why.clone(), why)
        }
        Ok(btf) => (
            load_tp_btf(&mut ebpf, btf),
            check_lsm(&mut ebpf, btf),
            load_fentry(&mut ebpf, btf),
        ),
    };
    let cgroup_sock_addr = match &cgroup2 {
        None => Check::no("no cgroup2 mount in /proc/self/mounts"),
        Some(root) => match load_cgroup(&mut ebpf) {
            Ok(()) => Check::yes(format!(
                "cgroup/connect4 loads; cgroup2 root {}",
                root.display()
            )),
            Err(error) => not_loaded(error),
        },
    };
    Support {
        tracepoint,
        tp_btf,
        cgroup_sock_addr,
        ringbuf,
        lsm,
        fentry,
        fmod_ret,
        cgroup2,
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing"))?;
    program
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())
}

fn load_tracepoint(ebpf: &mut Ebpf, name: &str, event: &str) -> Result<(), String> {
    let tp: &mut TracePoint = program(ebpf, name)?;
    tp.load().map_err(|e| e.to_string())?;
    let link = tp.attach("syscalls", event).map_err(|e| e.to_string())?;
    tp.detach(link).map_err(|e| e.to_string())
}

fn load_tp_btf(ebpf: &mut Ebpf, btf: &Btf) -> Check {
    let result = (|| {
        let tp: &mut BtfTracePoint = program(ebpf, "probe_tp_btf")?;
        tp.load("sched_process_fork", btf)
            .map_err(|e| e.to_string())?;
        let link = tp.attach().map_err(|e| e.to_string())?;
        tp.detach(link).map_err(|e| e.to_string())
    })();
    match result {
        Ok(()) => Check::yes("tp_btf sched_process_* programs load and attach"),
        Err(error) => not_loaded(error),
    }
}

fn load_cgroup(ebpf: &mut Ebpf) -> Result<(), String> {
    let prog: &mut CgroupSockAddr = program(ebpf, "probe_cgroup")?;
    prog.load().map_err(|e| e.to_string())
}

fn load_fentry(ebpf: &mut Ebpf, btf: &Btf) -> Check {
    let result = (|| {
        let prog: &mut FEntry = program(ebpf, "probe_fentry")?;
        prog.load("security_file_open", btf)
            .map_err(|e| e.to_string())
    })();
    match result {
        Ok(()) => Check::yes("fentry programs load (BPF trampolines work)"),
        Err(error) => not_loaded(error),
    }
}

/// The active LSM list, mounting securityfs first when needed.
pub fn active_lsms() -> Result<String, String> {
    sys::ensure_mounted("securityfs", sys::SECURITYFS_ROOT, sys::SECURITYFS_MAGIC)
        .map_err(|e| e.to_string())?;
    std::fs::read_to_string(format!("{}/lsm", sys::SECURITYFS_ROOT))
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("reading {}/lsm: {e}", sys::SECURITYFS_ROOT))
}

fn check_lsm(ebpf: &mut Ebpf, btf: &Btf) -> Check {
    let lsms = match active_lsms() {
        Ok(list) => list,
        Err(error) => return Check::no(format!("cannot read the active LSM list: {error}")),
    };
    if !lsms.split(',').any(|name| name == "bpf") {
        return Check::no(format!(
            "`bpf` is not in the active LSM list ({lsms}); boot with lsm=...,bpf"
        ));
    }
    let result = (|| {
        let prog: &mut Lsm = program(ebpf, "probe_lsm")?;
        prog.load("file_open", btf)
            .map_err(|e| format!("the kernel refused the program: {e}"))?;
        let link = prog.attach().map_err(|e| format!("attach failed: {e}"))?;
        let before = lsm_calls(ebpf)?;
        // Any open runs the hook; the counter must move or the kernel is not calling BPF LSM.
        let opened = std::fs::File::open("/proc/self/stat").map_err(|e| e.to_string())?;
        drop(opened);
        let after = lsm_calls(ebpf)?;
        let prog: &mut Lsm = program(ebpf, "probe_lsm")?;
        prog.detach(link).map_err(|e| e.to_string())?;
        if after > before {
            Ok(())
        } else {
            Err(format!(
                "the program loaded and attached but the kernel never called it (active LSMs: {lsms})"
            ))
        }
    })();
    match result {
        Ok(()) => Check::yes(format!(
            "BPF LSM runs (self-test counted an open; active LSMs: {lsms})"
        )),
        Err(error) => Check::no(error),
    }
}

fn lsm_calls(ebpf: &Ebpf) -> Result<u64, String> {
    let map = ebpf.map("calls").ok_or("map calls missing")?;
    let array = aya::maps::Array::<_, u64>::try_from(map).map_err(|e| e.to_string())?;
    array.get(&0, 0).map_err(|e| e.to_string())
}
