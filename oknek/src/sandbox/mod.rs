//! The two kernel sandboxes `oknek run` puts an agent under: a seccomp filter whose listener
//! oknekd answers ([`filter`]) and a Landlock ruleset for the block rules Landlock can express
//! ([`landlock`]). See docs/adr/0003-oknek-run-seccomp.md.

pub mod filter;
pub mod landlock;
