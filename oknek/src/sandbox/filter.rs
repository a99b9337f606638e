//! The seccomp filter of `oknek run`, as hand-assembled classic BPF (x86_64).
//!
//! ```text
//! arch != AUDIT_ARCH_X86_64, or an x32 syscall      → kill the process (cannot be judged)
//! io_uring_setup/enter/register                     → EPERM (io_uring would bypass seccomp)
//! ptrace, process_vm_writev                         → EPERM (would rewrite judged arguments)
//! open_by_handle_at, uselib                         → EPERM (opens that bypass path rules)
//! clone3                                            → ENOSYS (flags unreadable; libc falls back to clone)
//! clone with CLONE_VM but neither THREAD nor VFORK  → EPERM (hidden sharers of memory)
//! seccomp(SET_MODE_FILTER, NEW_LISTENER)            → EPERM (a nested listener would win)
//! execve, execveat, open, openat, openat2, creat,
//! connect, sendto, sendmsg, sendmmsg,
//! inotify_add_watch                                 → notify oknekd
//! everything else                                   → allow
//! ```
//!
//! sendto is notified with or without a destination: send(2) on a connected socket is
//! sendto(…, NULL, 0) on x86_64, and oknekd reads the model of plaintext requests to model
//! providers from it. write(2) and writev(2) are not notified, on sockets either: that would
//! stop every file write of the agent, so what an agent writes to a socket that way (Node.js
//! does) is not read.

use std::os::fd::RawFd;

pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_USER_NOTIF: u32 = 0x7fc0_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_lo(i: u32) -> u32 {
    16 + 8 * i
}

/// x86_64 syscall numbers the filter names.
pub mod nr {
    pub const OPEN: u32 = 2;
    pub const CONNECT: u32 = 42;
    pub const SENDTO: u32 = 44;
    pub const SENDMSG: u32 = 46;
    pub const CLONE: u32 = 56;
    pub const EXECVE: u32 = 59;
    pub const CREAT: u32 = 85;
    pub const PTRACE: u32 = 101;
    pub const USELIB: u32 = 134;
    pub const INOTIFY_ADD_WATCH: u32 = 254;
    pub const OPENAT: u32 = 257;
    pub const OPEN_BY_HANDLE_AT: u32 = 304;
    pub const SENDMMSG: u32 = 307;
    pub const PROCESS_VM_WRITEV: u32 = 311;
    pub const SECCOMP: u32 = 317;
    pub const EXECVEAT: u32 = 322;
    pub const IO_URING_SETUP: u32 = 425;
    pub const IO_URING_ENTER: u32 = 426;
    pub const IO_URING_REGISTER: u32 = 427;
    pub const CLONE3: u32 = 435;
    pub const OPENAT2: u32 = 437;
}

/// Syscalls oknekd judges.
pub const NOTIFIED: [u32; 11] = [
    nr::EXECVE,
    nr::EXECVEAT,
    nr::OPEN,
    nr::OPENAT,
    nr::OPENAT2,
    nr::CREAT,
    nr::CONNECT,
    nr::SENDTO,
    nr::SENDMSG,
    nr::SENDMMSG,
    nr::INOTIFY_ADD_WATCH,
];

/// Syscalls refused outright with EPERM.
pub const REFUSED: [u32; 7] = [
    nr::IO_URING_SETUP,
    nr::IO_URING_ENTER,
    nr::IO_URING_REGISTER,
    nr::PTRACE,
    nr::PROCESS_VM_WRITEV,
    nr::OPEN_BY_HANDLE_AT,
    nr::USELIB,
];

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The whole program. Every path ends in a return; jumps only go forward.
pub fn program() -> Vec<libc::sock_filter> {
    let eperm = RET_ERRNO | libc::EPERM as u32;
    let enosys = RET_ERRNO | libc::ENOSYS as u32;
    let mut p = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFF_NR),
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
    ];
    let simple = |p: &mut Vec<libc::sock_filter>, nr: u32, ret: u32| {
        p.push(jump(BPF_JEQ_K, nr, 0, 1));
        p.push(stmt(BPF_RET_K, ret));
    };
    for nr in NOTIFIED {
        simple(&mut p, nr, RET_USER_NOTIF);
    }
    for nr in REFUSED {
        simple(&mut p, nr, eperm);
    }
    simple(&mut p, nr::CLONE3, enosys);
    // clone(flags, …): a new task sharing memory must be a thread or a vfork child.
    p.extend([
        jump(BPF_JEQ_K, nr::CLONE, 0, 5),
        stmt(BPF_LD_W_ABS, off_arg_lo(0)),
        jump(BPF_JSET_K, libc::CLONE_VM as u32, 0, 2),
        jump(
            BPF_JSET_K,
            (libc::CLONE_THREAD | libc::CLONE_VFORK) as u32,
            1,
            0,
        ),
        stmt(BPF_RET_K, eperm),
        stmt(BPF_RET_K, RET_ALLOW),
    ]);
    // seccomp(SECCOMP_SET_MODE_FILTER, flags, …): no second listener below ours.
    p.extend([
        jump(BPF_JEQ_K, nr::SECCOMP, 0, 6),
        stmt(BPF_LD_W_ABS, off_arg_lo(0)),
        jump(BPF_JEQ_K, libc::SECCOMP_SET_MODE_FILTER, 0, 3),
        stmt(BPF_LD_W_ABS, off_arg_lo(1)),
        jump(
            BPF_JSET_K,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER as u32,
            0,
            1,
        ),
        stmt(BPF_RET_K, eperm),
        stmt(BPF_RET_K, RET_ALLOW),
    ]);
    p.push(stmt(BPF_RET_K, RET_ALLOW));
    p
}

/// Installs `prog` on the calling thread and returns the listener fd, or the errno.
/// Async-signal-safe: runs in the forked child before exec.
pub fn install(prog: &[libc::sock_filter]) -> Result<RawFd, i32> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast_mut(),
    };
    let base = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
    // WAIT_KILLABLE_RECV (5.19+): once oknekd has the notification, only a fatal signal
    // interrupts the call, so an emulated open is not undone and redone by every SIGCHLD.
    for flags in [base | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, base] {
        // SAFETY: fprog points to a valid program that outlives the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &raw const fprog,
            )
        };
        if fd >= 0 {
            return Ok(fd as RawFd);
        }
        // SAFETY: reading errno of this thread.
        let errno = unsafe { *libc::__errno_location() };
        if errno != libc::EINVAL {
            return Err(errno);
        }
    }
    Err(libc::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the instructions the program uses.
    fn run(prog: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let ins = prog[pc];
            pc += 1;
            match ins.code {
                BPF_LD_W_ABS => {
                    let k = ins.k as usize;
                    acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                }
                BPF_RET_K => return ins.k,
                BPF_JEQ_K | BPF_JGE_K | BPF_JSET_K => {
                    let taken = match ins.code {
                        BPF_JEQ_K => acc == ins.k,
                        BPF_JGE_K => acc >= ins.k,
                        _ => acc & ins.k != 0,
                    };
                    pc += if taken { ins.jt } else { ins.jf } as usize;
                }
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    const A: u32 = AUDIT_ARCH_X86_64;

    #[test]
    fn notified_refused_and_allowed() {
        let p = program();
        for n in NOTIFIED {
            assert_eq!(run(&p, A, n, [0; 6]), RET_USER_NOTIF, "nr {n}");
        }
        for n in REFUSED {
            assert_eq!(run(&p, A, n, [0; 6]), RET_ERRNO | 1, "nr {n}");
        }
        assert_eq!(run(&p, A, nr::CLONE3, [0; 6]), RET_ERRNO | 38);
        for n in [0u32, 1, 3, 60, 231, 39] {
            assert_eq!(run(&p, A, n, [0; 6]), RET_ALLOW, "nr {n}");
        }
    }

    #[test]
    fn foreign_arch_and_x32_are_killed() {
        let p = program();
        assert_eq!(run(&p, 0x4000_0003, 5, [0; 6]), RET_KILL_PROCESS);
        assert_eq!(run(&p, A, X32_SYSCALL_BIT | 2, [0; 6]), RET_KILL_PROCESS);
    }

    #[test]
    fn sendto_is_notified_with_or_without_an_address() {
        let p = program();
        assert_eq!(run(&p, A, nr::SENDTO, [3, 1, 2, 0, 0, 0]), RET_USER_NOTIF);
        assert_eq!(
            run(&p, A, nr::SENDTO, [3, 1, 2, 0, 0x7ffd_0000, 16]),
            RET_USER_NOTIF
        );
        assert_eq!(
            run(&p, A, nr::SENDTO, [3, 1, 2, 0, 1 << 40, 16]),
            RET_USER_NOTIF
        );
    }

    #[test]
    fn clone_may_not_hide_a_memory_sharer() {
        let p = program();
        let vm = libc::CLONE_VM as u64;
        let fork = libc::SIGCHLD as u64;
        assert_eq!(run(&p, A, nr::CLONE, [fork, 0, 0, 0, 0, 0]), RET_ALLOW);
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(run(&p, A, nr::CLONE, [thread, 0, 0, 0, 0, 0]), RET_ALLOW);
        let vfork = (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | fork;
        assert_eq!(run(&p, A, nr::CLONE, [vfork, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            run(&p, A, nr::CLONE, [vm | fork, 0, 0, 0, 0, 0]),
            RET_ERRNO | 1
        );
    }

    #[test]
    fn no_nested_listener() {
        let p = program();
        let filter = libc::SECCOMP_SET_MODE_FILTER as u64;
        let listener = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
        assert_eq!(
            run(&p, A, nr::SECCOMP, [filter, listener, 0, 0, 0, 0]),
            RET_ERRNO | 1
        );
        assert_eq!(run(&p, A, nr::SECCOMP, [filter, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            run(&p, A, nr::SECCOMP, [3, listener, 0, 0, 0, 0]),
            RET_ALLOW
        );
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        let p = program();
        assert!(p.len() < 4096);
        for (i, ins) in p.iter().enumerate() {
            if ins.code & 0x07 == 0x05 {
                assert!(
                    i + 1 + (ins.jt.max(ins.jf) as usize) < p.len(),
                    "jump at {i}"
                );
            }
        }
        assert_eq!(p.last().unwrap().code, BPF_RET_K);
    }
}
