//! The `clef-agent` executable: command line → configuration → lifecycle or command → exit
//! code. The lifecycles and `check`/`exec` assemble the agent themselves (`agent.rs`).

use std::process::ExitCode;

use clef_agent::cli::{self, Command};
use clef_agent::config::Config;
use clef_agent::error::Fatal;
use clef_agent::lifecycle::{daemon, lambda};
use clef_agent::{log, VERSION};

/// Every freed block is zeroed, so no plaintext outlives the buffer that held it.
#[global_allocator]
static ALLOCATOR: clef_agent::alloc::ZeroingAllocator = clef_agent::alloc::ZeroingAllocator;

fn main() -> ExitCode {
    // A panic message may quote data; print only where it happened.
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|location| location.to_string()).unwrap_or_default();
        log::error(&format!("internal error (a bug) at {location}"));
    }));
    let command = match cli::parse(std::env::args_os().skip(1).collect()) {
        Ok(command) => command,
        Err(message) => {
            log::error(&message);
            return ExitCode::from(2);
        }
    };
    let environment = |name: &str| std::env::var(name).ok();
    // Before the configuration is loaded, so that a misspelt required variable is explained
    // next to the configuration error it causes.
    if matches!(command, Command::Run | Command::Check | Command::Exec { .. } | Command::ExecWatch { .. }) {
        let names = std::env::vars_os().map(|(name, _)| name.to_string_lossy().into_owned());
        for warning in clef_agent::config::variables::unknown_variables(names) {
            log::error(&warning);
        }
    }
    let result = match command {
        Command::Version => {
            println!("clef-agent {VERSION}");
            Ok(())
        }
        Command::Help => {
            print!("{}", cli::HELP);
            Ok(())
        }
        Command::Healthcheck => cli::healthcheck::Target::from_env(environment)
            .map_err(Fatal::Config)
            .and_then(|target| cli::healthcheck::check_ready(&target).map_err(Fatal::NotReady)),
        Command::Run => Config::from_env(environment).map_err(Fatal::Config).and_then(|config| {
            match config.lambda_runtime_api.clone() {
                Some(runtime_api) => lambda::run(config, &runtime_api),
                None => daemon::run(config),
            }
        }),
        Command::Check => {
            Config::from_env(environment).map_err(Fatal::Config).and_then(|config| cli::check::run(&config))
        }
        Command::Exec { program, arguments } => Config::from_env(environment)
            .map_err(Fatal::Config)
            .and_then(|config| cli::exec::run(&config, &program, &arguments)),
        // The supervisor ends with CMD's status, not with success or failure.
        Command::ExecWatch { program, arguments, policy } => match Config::from_env(environment)
            .map_err(Fatal::Config)
            .and_then(|config| cli::watch::run(&config, &program, &arguments, policy))
        {
            Ok(status) => return ExitCode::from(status),
            Err(fatal) => Err(fatal),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(fatal) => report(fatal),
    }
}

fn report(fatal: Fatal) -> ExitCode {
    match fatal {
        Fatal::Config(error) => log::error(&format!("config error: {error}")),
        other => log::error(&format!("fatal: {other}")),
    }
    ExitCode::FAILURE
}
