//! The `open_cost` measurements as a standalone (static-capable) binary for VMs:
//! `oknek-bpf-bench [--lsm] [--quick] [--pin-dir DIR]`, as root.

fn main() {
    let opts = oknek_bpf::bench::BenchOptions::from_args(std::env::args().skip(1));
    if let Err(error) = oknek_bpf::bench::run(&opts) {
        eprintln!("oknek-bpf-bench: {error}");
        std::process::exit(1);
    }
}
