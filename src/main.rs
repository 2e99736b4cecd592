//! `tinyinetd`: the command line and exit codes; everything else is in the library.

#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use std::path::PathBuf;
use std::process::ExitCode;

use tinyinetd::log::Logger;
use tinyinetd::plan::Level;
use tinyinetd::Options;

const USAGE: &str = "\
usage: tinyinetd [-c PATH | --config PATH]          run in the foreground
       tinyinetd --check [-c PATH | --config PATH]  validate the config and print the services
       tinyinetd --version | --help";

const HELP: &str = "\
tinyinetd: a superserver. Binds the ports of the configured services and, for
every connection, runs the service's handler with the connection on fds 0-2.

Options:
  -c, --config PATH   configuration file (default /etc/tinyinetd.toml)
  -t, --check         validate the configuration, print each service, exit
  -V, --version       print the version and exit
  -h, --help          print this help and exit

Signals: SIGTERM/SIGINT drain and stop, SIGHUP reloads, SIGUSR1 logs status.
See tinyinetd(8) and tinyinetd.toml(5).";

#[derive(Clone, Copy)]
enum Mode {
    Run,
    Check,
}

fn parse() -> Result<Option<(Mode, Options)>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut mode = Mode::Run;
    let mut config: Option<PathBuf> = None;
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Short('c') | Long("config") => config = Some(p.value()?.into()),
            Short('t') | Long("check") => mode = Mode::Check,
            Short('V') | Long("version") => {
                println!("tinyinetd {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            Short('h') | Long("help") => {
                println!("{USAGE}\n\n{HELP}");
                return Ok(None);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    let default_config = config.is_none();
    let config = config.unwrap_or_else(|| tinyinetd::default_config().to_path_buf());
    Ok(Some((
        mode,
        Options {
            config,
            default_config,
        },
    )))
}

fn main() -> ExitCode {
    let (mode, opts) = match parse() {
        Ok(Some(x)) => x,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tinyinetd: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match mode {
        Mode::Check => tinyinetd::check(&opts).map(|(report, warnings)| {
            for w in warnings {
                eprintln!("{w}");
            }
            print!("{report}");
        }),
        Mode::Run => tinyinetd::run(&opts),
    };
    match (result, mode) {
        (Ok(()), _) => ExitCode::SUCCESS,
        // `--check` prints config errors as `PATH:LINE:COL: ...`, one per
        // line, as editors and CI annotators parse them.
        (Err(tinyinetd::Error::Config(e)), Mode::Check) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
        (Err(e), Mode::Check) => {
            eprintln!("tinyinetd: {e}");
            ExitCode::from(1)
        }
        // The daemon writes every line in its one log form, a failed start
        // included: one `start-failed` line per problem, the message whole.
        (Err(e), Mode::Run) => {
            let mut log = Logger::stderr(Level::Error);
            for line in e.to_string().lines() {
                log.event(Level::Error, "start-failed")
                    .kv_long("error", line)
                    .send();
            }
            ExitCode::from(1)
        }
    }
}
