//! The real libc functions behind the hooks, found with `dlsym(RTLD_NEXT, …)`.
//!
//! Each pointer is resolved once (all of them from the library constructor, so no hook normally
//! pays for `dlsym`, which may allocate) and kept in an atomic. A lookup that happens while this
//! thread is already inside `dlsym` returns nothing instead of recursing: a malloc replacement
//! that opens a file during `dlsym` then gets the raw-syscall fallback of `open`.

use core::cell::Cell;
use core::ffi::CStr;
use core::sync::atomic::{AtomicUsize, Ordering};

use libc::{
    FILE, c_char, c_int, c_uint, c_void, mmsghdr, mode_t, msghdr, pid_t,
    posix_spawn_file_actions_t, posix_spawnattr_t, size_t, sockaddr, socklen_t, ssize_t,
};

thread_local! {
    /// True while this thread is inside `dlsym`. Const-initialised, no destructor: plain TLS.
    static RESOLVING: Cell<bool> = const { Cell::new(false) };
}

fn resolve(slot: &AtomicUsize, name: &CStr) -> usize {
    let v = slot.load(Ordering::Acquire);
    if v != 0 {
        return v;
    }
    if RESOLVING.replace(true) {
        return 0;
    }
    // SAFETY: RTLD_NEXT with a NUL-terminated name: the next definition after this library in
    // the lookup order, i.e. libc's.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    RESOLVING.set(false);
    if p != 0 {
        slot.store(p, Ordering::Release);
    }
    p
}

pub type Argv = *const *const c_char;
pub type OpenFn = unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int;
pub type Open2Fn = unsafe extern "C" fn(*const c_char, c_int) -> c_int;
pub type OpenatFn = unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int;
pub type Openat2Fn = unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;
pub type CreatFn = unsafe extern "C" fn(*const c_char, mode_t) -> c_int;
pub type FopenFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut FILE;
pub type FreopenFn = unsafe extern "C" fn(*const c_char, *const c_char, *mut FILE) -> *mut FILE;
pub type ExecveFn = unsafe extern "C" fn(*const c_char, Argv, Argv) -> c_int;
pub type ExecvFn = unsafe extern "C" fn(*const c_char, Argv) -> c_int;
pub type FexecveFn = unsafe extern "C" fn(c_int, Argv, Argv) -> c_int;
pub type ExecveatFn = unsafe extern "C" fn(c_int, *const c_char, Argv, Argv, c_int) -> c_int;
pub type SpawnFn = unsafe extern "C" fn(
    *mut pid_t,
    *const c_char,
    *const posix_spawn_file_actions_t,
    *const posix_spawnattr_t,
    Argv,
    Argv,
) -> c_int;
pub type PidfdSpawnFn = unsafe extern "C" fn(
    *mut c_int,
    *const c_char,
    *const posix_spawn_file_actions_t,
    *const posix_spawnattr_t,
    Argv,
    Argv,
) -> c_int;
pub type SystemFn = unsafe extern "C" fn(*const c_char) -> c_int;
pub type PopenFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut FILE;
pub type ConnectFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
pub type SendFn = unsafe extern "C" fn(c_int, *const c_void, size_t, c_int) -> ssize_t;
pub type SendtoFn = unsafe extern "C" fn(
    c_int,
    *const c_void,
    size_t,
    c_int,
    *const sockaddr,
    socklen_t,
) -> ssize_t;
pub type SendmsgFn = unsafe extern "C" fn(c_int, *const msghdr, c_int) -> ssize_t;
pub type SendmmsgFn = unsafe extern "C" fn(c_int, *mut mmsghdr, c_uint, c_int) -> c_int;
pub type InotifyFn = unsafe extern "C" fn(c_int, *const c_char, u32) -> c_int;

macro_rules! real {
    ($( $name:ident = $sym:literal : $ty:ty; )*) => {
        $(
            pub fn $name() -> Option<$ty> {
                static SLOT: AtomicUsize = AtomicUsize::new(0);
                let p = resolve(&SLOT, $sym);
                if p == 0 {
                    return None;
                }
                // SAFETY: p is the address libc exports under this name, and the type is that
                // function's C prototype.
                Some(unsafe { core::mem::transmute::<usize, $ty>(p) })
            }
        )*

        /// Resolves every function now (from the constructor), so hooks never call dlsym.
        pub fn resolve_all() {
            $( let _ = $name(); )*
        }
    };
}

real! {
    open = c"open": OpenFn;
    open64 = c"open64": OpenFn;
    open_2 = c"__open_2": Open2Fn;
    open64_2 = c"__open64_2": Open2Fn;
    openat = c"openat": OpenatFn;
    openat64 = c"openat64": OpenatFn;
    openat_2 = c"__openat_2": Openat2Fn;
    openat64_2 = c"__openat64_2": Openat2Fn;
    creat = c"creat": CreatFn;
    creat64 = c"creat64": CreatFn;
    fopen = c"fopen": FopenFn;
    fopen64 = c"fopen64": FopenFn;
    freopen = c"freopen": FreopenFn;
    freopen64 = c"freopen64": FreopenFn;
    execve = c"execve": ExecveFn;
    execv = c"execv": ExecvFn;
    execvp = c"execvp": ExecvFn;
    execvpe = c"execvpe": ExecveFn;
    fexecve = c"fexecve": FexecveFn;
    execveat = c"execveat": ExecveatFn;
    posix_spawn = c"posix_spawn": SpawnFn;
    posix_spawnp = c"posix_spawnp": SpawnFn;
    pidfd_spawn = c"pidfd_spawn": PidfdSpawnFn;
    pidfd_spawnp = c"pidfd_spawnp": PidfdSpawnFn;
    system = c"system": SystemFn;
    popen = c"popen": PopenFn;
    connect = c"connect": ConnectFn;
    send = c"send": SendFn;
    sendto = c"sendto": SendtoFn;
    sendmsg = c"sendmsg": SendmsgFn;
    sendmmsg = c"sendmmsg": SendmmsgFn;
    inotify_add_watch = c"inotify_add_watch": InotifyFn;
}
