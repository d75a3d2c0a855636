use clap::Parser as _;
use rollcall::cli::{self, Cli, EXIT_FAILURE, Exit};

fn main() {
    let cli = Cli::parse();
    cli::init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rollcall: cannot start the runtime: {e}");
            std::process::exit(EXIT_FAILURE);
        }
    };
    let code = match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<Exit>() {
                eprintln!("{}", exit.message);
                exit.code
            } else if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                0
            } else {
                eprintln!("rollcall: {e:#}");
                EXIT_FAILURE
            }
        }
    };
    std::process::exit(code);
}
