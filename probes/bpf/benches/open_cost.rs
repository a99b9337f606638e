//! open()+close() cost with and without the probes, and ring-buffer throughput.
//! `cargo bench -p oknek-bpf --bench open_cost` (root; add `-- --lsm` where BPF LSM runs).

fn main() {
    let opts = oknek_bpf::bench::BenchOptions::from_args(std::env::args().skip(1));
    if let Err(error) = oknek_bpf::bench::run(&opts) {
        eprintln!("open_cost: {error}");
        std::process::exit(1);
    }
}
