//! `execl`, `execlp` and `execle`: variadic argument lists, in stable Rust.
//!
//! Their arguments (`path, arg0, arg1, …, NULL[, envp]`) are all pointers. On x86_64 the first six
//! integer arguments travel in rdi, rsi, rdx, rcx, r8, r9 and the rest on the caller's stack,
//! just above the return address. Each exported symbol below is a naked function (stable since
//! Rust 1.88) that pops the return address, pushes r9, r8, rcx, rdx and rsi in that order — which
//! lays `arg0 … arg4` out in memory directly below the stack arguments — and so turns the whole
//! list into an ordinary NULL-terminated `argv` array on the stack, with no copying, no maximum
//! argument count and no reading past the terminating NULL (registers after it may hold garbage,
//! but they are never looked at; stack slots after it are only read when the caller passed
//! them). It then calls `execl_common(path, argv, kind)` and restores the stack exactly.
//!
//! The alternative — C wrappers built by a build script — would need a C compiler at build time
//! and, worse, a cdylib's version script hides every symbol not defined in Rust, so the C
//! functions would not even be exported.

use core::arch::naked_asm;

use libc::{c_char, c_int};

use crate::hooks;
use crate::real::Argv;

const EXECL: c_int = 0;
const EXECLP: c_int = 1;
const EXECLE: c_int = 2;

/// # Safety
/// Called only by the trampolines: `argv` is the caller's NULL-terminated argument list (for
/// execle followed by `envp`).
unsafe extern "C" fn execl_common(path: *const c_char, argv: Argv, kind: c_int) -> c_int {
    // SAFETY: the list is the caller's execl* arguments, as the trampolines lay them out; the
    // hooks below check and call the real functions.
    unsafe {
        match kind {
            EXECLP => hooks::execvp(path, argv),
            EXECLE => {
                let mut i = 0usize;
                while !(*argv.add(i)).is_null() {
                    i = i.saturating_add(1);
                }
                // execle's envp is the argument after the NULL that ends the list.
                let envp = *argv.add(i.saturating_add(1)) as Argv;
                hooks::execve(path, argv, envp)
            }
            _ => hooks::execv(path, argv),
        }
    }
}

macro_rules! trampoline {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// As the C function: a NULL-terminated list of C strings after `path`.
        #[unsafe(naked)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name() -> c_int {
            naked_asm!(
                // An indirect-branch target (CET); a no-op elsewhere.
                "endbr64",
                // rsp → return address; args 7.. at rsp+8.
                "pop r11",
                "push r9",
                "push r8",
                "push rcx",
                "push rdx",
                "push rsi",
                // rsp → arg0, arg1 … arg4, then the caller's stack arguments: argv.
                "mov rsi, rsp",
                // Keep the return address in a callee-saved register. This push also brings
                // rsp back to 16-byte alignment for the call (entry ≡ 8 mod 16; -8 +40 +8).
                "push rbx",
                "mov rbx, r11",
                "mov edx, {kind}",
                "call {common}",
                "mov r11, rbx",
                "pop rbx",
                "add rsp, 40",
                "push r11",
                "ret",
                kind = const $kind,
                common = sym execl_common,
            )
        }
    };
}

trampoline!(
    /// `execl(path, arg0, ..., NULL)`
    execl,
    EXECL
);
trampoline!(
    /// `execlp(file, arg0, ..., NULL)`
    execlp,
    EXECLP
);
trampoline!(
    /// `execle(path, arg0, ..., NULL, envp)`
    execle,
    EXECLE
);
