//! `lastmile-controller`: serve the API, migrate, manage accounts, pay volunteers. The command line lives in `lastmile_controller::cli`; this binary
//! only calls it, so that a release build compiles that code once, in the library,
//! rather than instantiating its generic and async code again here.

/// jemalloc, not the system's malloc: it leaves the untouched pages of each
/// connection's 8 KiB buffers untouched (glibc's packing makes them resident), which
/// took an idle agent's cost from 20 to 14 KiB (ARCHITECTURE.md, "Serving agents at
/// scale").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    lastmile_controller::cli::main()
}
