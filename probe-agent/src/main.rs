//! `lastmile-agent`: the probe a volunteer runs. The command line lives in `lastmile_agent::cli`; this binary
//! only calls it, so that a release build compiles that code once, in the library,
//! rather than instantiating its generic and async code again here.

fn main() -> anyhow::Result<()> {
    lastmile_agent::cli::main()
}
