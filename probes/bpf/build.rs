//! Compiles the C eBPF programs in src/bpf/ with clang into OUT_DIR.
//!
//! The objects must be byte-reproducible: the compile runs from the source directory with
//! relative file names and maps every prefix that depends on the checkout location.
//!
//! clang needs `-g` to emit BTF (CO-RE relocations depend on it); the DWARF sections that come
//! with it are stripped afterwards (llvm-strip keeps .BTF and .BTF.ext), since they would only
//! make the daemon bigger.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAMS: [&str; 2] = ["oknek", "support"];
const HEADERS: [&str; 2] = ["oknek_event.h", "kernel_types.h"];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let src_dir = manifest_dir.join("src/bpf");
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=LLVM_STRIP");
    println!("cargo:rerun-if-env-changed=OKNEK_BPF_INCLUDE");
    for header in HEADERS {
        println!("cargo:rerun-if-changed=src/bpf/{header}");
    }
    for program in PROGRAMS {
        println!("cargo:rerun-if-changed=src/bpf/{program}.bpf.c");
    }

    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let llvm_strip = env::var("LLVM_STRIP").unwrap_or_else(|_| "llvm-strip".to_owned());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    let (target_arch_define, multiarch) = match arch.as_str() {
        "x86_64" => ("__TARGET_ARCH_x86", "x86_64-linux-gnu"),
        "aarch64" => ("__TARGET_ARCH_arm64", "aarch64-linux-gnu"),
        other => fail(&format!(
            "eBPF probes are not set up for target arch {other}"
        )),
    };
    let include_root = env::var("OKNEK_BPF_INCLUDE").unwrap_or_else(|_| "/usr/include".to_owned());
    let include_root = Path::new(&include_root);
    if !include_root.join("bpf/bpf_helpers.h").exists() {
        fail(&format!(
            "libbpf headers not found ({}/bpf/bpf_helpers.h); install the Debian packages clang and libbpf-dev",
            include_root.display()
        ));
    }
    for program in PROGRAMS {
        let object = out_dir.join(format!("{program}.bpf.o"));
        let status = Command::new(&clang)
            .current_dir(&src_dir)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
            .arg(format!("-D{target_arch_define}"))
            .arg(format!("-I{}", include_root.join(multiarch).display()))
            .arg(format!("-I{}", include_root.display()))
            .arg(format!("-ffile-prefix-map={}=.", src_dir.display()))
            .arg(format!("-fdebug-prefix-map={}=.", src_dir.display()))
            .arg("-fdebug-compilation-dir=.")
            .arg("-c")
            .arg(format!("{program}.bpf.c"))
            .arg("-o")
            .arg(&object)
            .status();
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => fail(&format!(
                "clang failed on src/bpf/{program}.bpf.c ({status})"
            )),
            Err(error) => fail(&format!(
                "cannot run {clang} ({error}); install the Debian packages clang and libbpf-dev, or set CLANG"
            )),
        }
        match Command::new(&llvm_strip)
            .arg("--strip-debug")
            .arg(&object)
            .status()
        {
            Ok(status) if status.success() => {}
            Ok(status) => fail(&format!("llvm-strip failed on {program}.bpf.o ({status})")),
            Err(error) => fail(&format!(
                "cannot run {llvm_strip} ({error}); install the Debian package llvm, or set LLVM_STRIP"
            )),
        }
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: oknek-bpf: {message}");
    std::process::exit(1);
}
