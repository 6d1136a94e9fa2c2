//! `lastmile-demo`: the whole product on this machine, the README's first command. The command line lives in `lastmile_demo::cli`; this binary
//! only calls it, so that a release build compiles that code once, in the library,
//! rather than instantiating its generic and async code again here.

fn main() -> anyhow::Result<()> {
    lastmile_demo::cli::main()
}
