//! The statushub binary: parses the command line and calls the library.

use clap::Parser as _;

use statushub::cli::{Cli, Command};

/// mimalloc instead of glibc's malloc: at saturation, glibc's allocator
/// (`_int_malloc`, `malloc_consolidate`, `_int_free`) took about a fifth of
/// the hub's CPU, every request allocating and freeing across the HTTP
/// workers, the actor thread and the SQLite writer (`BENCHMARKS.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    // Parsed first: the log format is a setting. An invalid one (or any
    // other invalid flag) is reported by clap, which exits with status 2.
    let cli = Cli::parse();
    let style = statushub::telemetry::LogStyle {
        format: cli.log_format,
        ansi: statushub::telemetry::stderr_is_terminal(),
    };
    let subscriber = statushub::telemetry::get_subscriber("info", style, std::io::stderr);
    statushub::telemetry::init_subscriber(subscriber);
    match statushub::run(cli.command.unwrap_or_else(default_serve)).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error.cause_chain = ?error, error.message = %error, "statushub failed");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `statushub` with no subcommand runs `serve` with its defaults (and the
/// environment).
fn default_serve() -> Command {
    match Cli::try_parse_from(["statushub", "serve"]) {
        Ok(Cli {
            command: Some(command),
            ..
        }) => command,
        // `serve` has no required arguments, so parsing it cannot fail
        // unless an environment variable is invalid: report that and exit.
        Ok(Cli { command: None, .. }) => unreachable!("serve was given"),
        Err(error) => error.exit(),
    }
}
