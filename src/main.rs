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
       tinyinetd import inetd [--services PATH] FILE       print an inetd.conf as tinyinetd.toml
       tinyinetd import xinetd [--services PATH] PATH...   print xinetd files or directories as tinyinetd.toml
       tinyinetd status [-c PATH] [--json | --prometheus]  show the running daemon's services and connections
       tinyinetd reload [-c PATH]                          reload the running daemon and report the result
       tinyinetd --version | --help";

const HELP: &str = "\
tinyinetd: a superserver. Binds the ports of the configured services and, for
every connection, runs the service's handler with the connection on fds 0-2.

Options:
  -c, --config PATH   configuration file (default /etc/tinyinetd.toml)
  -t, --check         validate the configuration, print each service, exit
  -V, --version       print the version and exit
  -h, --help          print this help and exit

import: reads an inetd.conf, or xinetd files and directories (such as
/etc/xinetd.conf and /etc/xinetd.d), and prints the equivalent services on
stdout: each mapped one with a comment naming the line it came from, each
other one commented out with the reason. Ports of service names come from
/etc/services (--services PATH names another file). A summary goes to
stderr; the exit status is 0 when everything mapped, 1 when anything did not.

status and reload talk to the running daemon through its control socket
(control_socket in the configuration file's [daemon] table, default
/run/tinyinetd/control.sock for a root daemon). status prints a table,
--json one JSON document, --prometheus the Prometheus text format. reload
prints what changed and exits 0, or prints the configuration errors as
--check does and exits 1 (the daemon keeps its previous configuration).

Signals: SIGTERM/SIGINT drain and stop, SIGHUP reloads, SIGUSR1 logs status.
See tinyinetd(8) and tinyinetd.toml(5).";

#[derive(Clone, Copy)]
enum Mode {
    Run,
    Check,
}

/// `tinyinetd import FORMAT [--services PATH] PATH...`, parsed.
struct Import {
    format: tinyinetd::import::Format,
    paths: Vec<PathBuf>,
    services: PathBuf,
}

/// The `import` command line after the word `import`.
fn parse_import(mut p: lexopt::Parser) -> Result<Import, lexopt::Error> {
    use lexopt::prelude::*;
    use tinyinetd::import::Format;
    let format = match p.next()? {
        Some(Value(v)) if v == "inetd" => Format::Inetd,
        Some(Value(v)) if v == "xinetd" => Format::Xinetd,
        Some(Value(v)) => {
            return Err(format!(
                "import reads \"inetd\" or \"xinetd\", not {:?}",
                v.to_string_lossy()
            )
            .into())
        }
        Some(other) => return Err(other.unexpected()),
        None => return Err("import needs a format: inetd or xinetd".into()),
    };
    let mut services = PathBuf::from(tinyinetd::import::SERVICES_PATH);
    let mut paths = Vec::new();
    while let Some(arg) = p.next()? {
        match arg {
            Long("services") => services = p.value()?.into(),
            Value(v) => paths.push(PathBuf::from(v)),
            _ => return Err(arg.unexpected()),
        }
    }
    match (format, paths.len()) {
        (_, 0) => Err("import needs a file to read".into()),
        (Format::Inetd, n) if n > 1 => Err("import inetd reads one file".into()),
        _ => Ok(Import {
            format,
            paths,
            services,
        }),
    }
}

/// Runs `import`: the configuration on stdout, the summary on stderr.
fn import(i: &Import) -> ExitCode {
    match tinyinetd::import::run(i.format, &i.paths, &i.services) {
        Ok(report) => {
            print!("{}", report.toml);
            for line in &report.summary {
                eprintln!("{line}");
            }
            ExitCode::from(u8::from(!report.complete))
        }
        Err(e) => {
            eprintln!("tinyinetd: {e}");
            ExitCode::from(1)
        }
    }
}

/// What the command line asks for.
enum Command {
    Daemon(Mode, Options),
    Import(Import),
    /// `status`, with the config to find the socket in.
    Status(PathBuf, tinyinetd::client::Format),
    /// `reload`.
    Reload(PathBuf),
}

/// The `status` or `reload` command line after its word.
fn parse_control(mut p: lexopt::Parser, status: bool) -> Result<Command, lexopt::Error> {
    use lexopt::prelude::*;
    use tinyinetd::client::Format;
    let mut config = tinyinetd::default_config().to_path_buf();
    let mut format = Format::Table;
    while let Some(arg) = p.next()? {
        match arg {
            Short('c') | Long("config") => config = p.value()?.into(),
            Long("json") if status && format == Format::Table => format = Format::Json,
            Long("prometheus") if status && format == Format::Table => format = Format::Prometheus,
            Long("json" | "prometheus") if status => {
                return Err("status takes one of --json and --prometheus".into())
            }
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(if status {
        Command::Status(config, format)
    } else {
        Command::Reload(config)
    })
}

/// Runs `status` or `reload`: the answer on stdout, or the problems as
/// `--check` prints them and one message on stderr, exit status 1.
fn control(cmd: &Command) -> ExitCode {
    let result = match cmd {
        Command::Status(config, format) => tinyinetd::client::status(config, *format),
        Command::Reload(config) => tinyinetd::client::reload(config),
        _ => return ExitCode::from(2),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            if let Some(problems) = &f.problems {
                eprintln!("{}", problems.trim_end());
            }
            eprintln!("tinyinetd: {}", f.message);
            ExitCode::from(1)
        }
    }
}

fn parse() -> Result<Option<Command>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut mode = Mode::Run;
    let mut config: Option<PathBuf> = None;
    let mut p = lexopt::Parser::from_env();
    let mut first = true;
    while let Some(arg) = p.next()? {
        match arg {
            Value(v) if first && v == "import" => {
                return parse_import(p).map(|i| Some(Command::Import(i)))
            }
            Value(v) if first && (v == "status" || v == "reload") => {
                return parse_control(p, v == "status").map(Some)
            }
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
        first = false;
    }
    let default_config = config.is_none();
    let config = config.unwrap_or_else(|| tinyinetd::default_config().to_path_buf());
    Ok(Some(Command::Daemon(
        mode,
        Options {
            config,
            default_config,
        },
    )))
}

fn main() -> ExitCode {
    let (mode, opts) = match parse() {
        Ok(Some(Command::Daemon(mode, opts))) => (mode, opts),
        Ok(Some(Command::Import(i))) => return import(&i),
        Ok(Some(cmd)) => return control(&cmd),
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
