//! `lastmile-controller`: serve the API, migrate, manage accounts, pay volunteers. The command line lives in `lastmile_controller::cli`; this binary
//! only calls it, so that a release build compiles that code once, in the library,
//! rather than instantiating its generic and async code again here.

fn main() -> anyhow::Result<()> {
    lastmile_controller::cli::main()
}
