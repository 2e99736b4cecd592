//! Unit tests of the configuration checker, against a fake system of users and programs.

use std::ffi::CString;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::check::suggest;
use super::cross::conflicts;
use super::daemon::DAEMON_KEYS;
use super::service::SERVICE_KEYS;
use super::*;
use crate::plan::{Level, Limits, ListenAddr, LogTarget};

/// A machine with users root(0), nobody(65534), alice(1000) and an
/// executable at /bin/handler and /opt/h/echo.
struct FakeSystem {
    euid: u32,
}

impl System for FakeSystem {
    fn identity(&self) -> (u32, u32) {
        (self.euid, self.euid)
    }
    fn user(&self, name: &str) -> Result<Option<(u32, u32)>, String> {
        Ok(match name {
            "ldapuser" => return Err("getent passwd ldapuser: no answer within 10s".into()),
            "root" => Some((0, 0)),
            "toor" => Some((0, 0)),
            "nobody" => Some((65534, 65534)),
            "alice" => Some((1000, 1000)),
            "slowgroup" => Some((1001, 4242)),
            "bare" => Some((1002, 7777)),
            _ => None,
        })
    }
    fn user_name(&self, uid: u32) -> Result<Option<String>, String> {
        Ok(Some(match uid {
            0 => "root".into(),
            1000 => "alice".into(),
            _ => return Ok(None),
        }))
    }
    fn group(&self, name: &str) -> Result<Option<u32>, String> {
        Ok(match name {
            "root" => Some(0),
            "wheel0" => Some(0),
            "nogroup" => Some(65534),
            "alice" => Some(1000),
            "staff" => Some(50),
            _ => None,
        })
    }
    fn group_name(&self, gid: u32) -> Result<Option<String>, String> {
        Ok(Some(match gid {
            0 => "root".into(),
            65534 => "nogroup".into(),
            1000 => "alice".into(),
            4242 => return Err("getent group 4242: no answer within 10s".into()),
            _ => return Ok(None),
        }))
    }
    fn group_list(&self, user: &str, gid: u32) -> Result<Vec<u32>, String> {
        Ok(if user == "alice" {
            vec![gid, 50]
        } else {
            vec![gid]
        })
    }
    fn exe_dir(&self) -> Option<PathBuf> {
        Some(PathBuf::from("/opt/build"))
    }
    fn program(&self, path: &Path, mode: trust::Mode) -> Result<Option<OwnedFd>, Refusal> {
        match path.to_str() {
            Some("/opt/h/loose") if mode == trust::Mode::Root => Err(Refusal::Untrusted(
                "/opt/h/loose is writable by others (mode 0777)".into(),
            )),
            Some("/bin/handler" | "/opt/h/echo" | "/opt/h/loose" | "/opt/build/tinyinetd-sum") => {
                Ok(None)
            }
            Some("/bin/plain") => Err(Refusal::Unusable(
                "not executable (no execute permission)".into(),
                None,
            )),
            _ => Err(Refusal::Unusable(
                "No such file or directory".into(),
                Some(nix::errno::Errno::ENOENT),
            )),
        }
    }
}

fn check(text: &str, euid: u32) -> Result<Plan, ConfigError> {
    parse(Path::new("t.toml"), text, &FakeSystem { euid })
}

fn errors(text: &str) -> String {
    match check(text, 0) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const MINIMAL: &str = r#"
[daemon]
handler_dir = "/opt/h"

[[service]]
name = "echo"
listen = ["127.0.0.1:9877"]
program = "echo"
"#;

#[test]
fn minimal_service_resolves_everything() {
    let plan = check(MINIMAL, 0).unwrap();
    let s = &plan.services[0];
    assert_eq!(s.name, "echo");
    assert_eq!(
        s.listen,
        vec![ListenAddr::Addr("127.0.0.1:9877".parse().unwrap())]
    );
    assert_eq!(s.image.path.to_str().unwrap(), "/opt/h/echo");
    assert_eq!(s.image.argv, vec![CString::new("echo").unwrap()]);
    let cred = s.cred.as_ref().unwrap();
    assert_eq!(
        (cred.uid, cred.gid, cred.user.as_str(), cred.group.as_str()),
        (65534, 65534, "nobody", "nogroup")
    );
    assert_eq!(s.limits, Limits::default());
    assert!(s.enabled);
    assert_eq!(
        s.image.env,
        [
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "PROTO=TCP",
            "TINYINETD_SERVICE=echo"
        ]
        .map(|v| CString::new(v).unwrap())
    );
}

#[test]
fn every_key_is_read() {
    let text = r#"
[daemon]
log = "stderr"
log_level = "debug"
max_connections = 10
shutdown_timeout = "250ms"
handler_dir = "/opt/h"

[[service]]
name = "a-1_b"
listen = ["127.0.0.1:1", "[::1]:2", "3"]
program = "/bin/handler"
args = ["-x", "y z"]
user = "alice"
group = "staff"
env = { GREETING = "hello", PATH = "/opt/bin" }
max_instances = 5
max_per_source = 2
max_rate = 7
allow = ["127.0.0.0/8", "::1"]
deny = ["127.0.0.2"]
timeout = "1m"
enabled = false
source_prefix_v4 = 24
source_prefix_v6 = 48
umask = "077"
"#;
    let plan = check(text, 0).unwrap();
    assert_eq!(plan.daemon.log, LogTarget::Stderr);
    assert_eq!(plan.daemon.log_level, Level::Debug);
    assert_eq!(plan.daemon.max_connections, 10);
    assert_eq!(plan.daemon.shutdown_timeout, Duration::from_millis(250));
    let s = &plan.services[0];
    assert_eq!(s.listen.len(), 3);
    assert_eq!(s.listen[2], ListenAddr::Any(3));
    assert_eq!(s.image.argv.len(), 3);
    assert_eq!(s.image.argv[0].to_str().unwrap(), "handler");
    let cred = s.cred.as_ref().unwrap();
    assert_eq!(
        (cred.uid, cred.gid, cred.groups.clone()),
        (1000, 50, vec![50])
    );
    assert_eq!(
        s.image.env,
        [
            "PATH=/opt/bin",
            "PROTO=TCP",
            "TINYINETD_SERVICE=a-1_b",
            "GREETING=hello"
        ]
        .map(|v| CString::new(v).unwrap())
    );
    assert_eq!(s.limits.max_instances, 5);
    assert_eq!(s.limits.max_per_source, Some(2));
    assert_eq!(s.limits.max_rate, Some(7));
    assert_eq!(s.limits.timeout, Some(Duration::from_secs(60)));
    assert_eq!(
        (s.limits.source_prefix_v4, s.limits.source_prefix_v6),
        (24, 48)
    );
    assert_eq!(s.access.allow.len(), 2);
    assert_eq!(
        s.access.deny,
        vec!["127.0.0.2/32".parse::<IpNet>().unwrap()]
    );
    assert!(!s.enabled);
    assert_eq!(s.image.umask, 0o077);
}

#[test]
fn unknown_key_points_at_the_key_and_suggests() {
    let e = errors(&format!("{MINIMAL}max_instance = 3\n"));
    assert_eq!(
            e,
            "t.toml:9:1: service \"echo\": unknown key \"max_instance\" (did you mean \"max_instances\"?)"
        );
}

#[test]
fn value_errors_point_at_the_value() {
    let e = errors(&MINIMAL.replace("\"127.0.0.1:9877\"", "\"127.0.0.1\""));
    assert!(
        e.starts_with("t.toml:7:11: service \"echo\": invalid listen address \"127.0.0.1\""),
        "{e}"
    );
}

#[test]
fn all_errors_are_reported() {
    let text = r#"
[daemon]
log = "loud"
shutdown_timeout = "5"

[[service]]
name = "Echo!"
listen = ["127.0.0.1:0"]
program = "missing"
allow = ["10.0.0.1/8"]
"#;
    let e = errors(text);
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 6, "{e}");
    assert!(
        lines[0].starts_with("t.toml:3:7: daemon: \"log\" must be"),
        "{e}"
    );
    assert!(
        lines[1].starts_with("t.toml:4:20: daemon: \"shutdown_timeout\": invalid duration"),
        "{e}"
    );
    assert!(
        lines[2].starts_with("t.toml:7:8: service #1: \"name\" must be"),
        "{e}"
    );
    assert!(
        lines[3].contains("8:11") && lines[3].contains("port must be 1 to 65535"),
        "{e}"
    );
    assert!(
        lines[5]
            .contains("\"allow\": \"10.0.0.1/8\" has host bits set; did you mean \"10.0.0.0/8\"?"),
        "{e}"
    );
}

#[test]
fn syntax_error_has_line_and_column() {
    let e = errors("[[service]]\nname = \"echo\nlisten = []\n");
    assert!(e.starts_with("t.toml:2:"), "{e}");
    assert!(e.contains("TOML syntax error"), "{e}");
}

#[test]
fn duplicate_names_and_addresses() {
    let text = format!(
        "{MINIMAL}\n[[service]]\nname = \"echo\"\nlisten = [\"9877\"]\nprogram = \"echo\"\n"
    );
    let e = errors(&text);
    assert!(e.contains("t.toml:11:8: service \"echo\": duplicate service name \"echo\" (first defined on line 6)"), "{e}");
    assert!(e.contains("t.toml:12:11: service \"echo\": listen address \"9877\" conflicts with \"127.0.0.1:9877\" of service \"echo\""), "{e}");
}

#[test]
fn missing_required_keys() {
    let e = errors("[[service]]\nname = \"x\"\n");
    assert!(
        e.contains("service \"x\": missing required key \"listen\""),
        "{e}"
    );
    assert!(
        e.contains("service \"x\": missing required key \"program\""),
        "{e}"
    );
    assert_eq!(
        errors("[daemon]\n"),
        "t.toml:1:1: no [[service]] is defined: there is nothing to serve"
    );
}

#[test]
fn programs_are_checked() {
    let e = errors(&MINIMAL.replace("program = \"echo\"", "program = \"/bin/plain\""));
    assert!(
        e.contains("8:11: service \"echo\": program \"/bin/plain\": not executable"),
        "{e}"
    );
    let e = errors(&MINIMAL.replace("program = \"echo\"", "program = \"nope\""));
    assert!(e.contains("program \"nope\" not found or not usable (/opt/h/nope: No such file or directory; /opt/build/nope: No such file or directory)"), "{e}");
    let e = errors(&MINIMAL.replace("program = \"echo\"", "program = \"bin/echo\""));
    assert!(
        e.contains("must be an absolute path or a bare file name"),
        "{e}"
    );
    // Found beside the daemon when not in handler_dir.
    let plan = check(
        &MINIMAL.replace("program = \"echo\"", "program = \"tinyinetd-sum\""),
        0,
    )
    .unwrap();
    assert_eq!(
        plan.services[0].image.path.to_str().unwrap(),
        "/opt/build/tinyinetd-sum"
    );
}

#[test]
fn users_when_not_root() {
    // Not root, no user: handlers keep the daemon's identity.
    assert_eq!(check(MINIMAL, 1000).unwrap().services[0].cred, None);
    let e = parse(
        Path::new("t.toml"),
        &format!("{MINIMAL}user = \"nobody\"\n"),
        &FakeSystem { euid: 1000 },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("9:8: service \"echo\": cannot run handlers as user \"nobody\": the daemon runs as \"alice\""), "{e}");
    let e = parse(
        Path::new("t.toml"),
        &format!("{MINIMAL}user = \"ghost\"\n"),
        &FakeSystem { euid: 1000 },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown user \"ghost\""), "{e}");
    assert!(check(&format!("{MINIMAL}user = \"alice\"\n"), 1000).is_ok());
}

#[test]
fn a_failed_lookup_is_reported_as_such_not_as_unknown() {
    let e = errors(&format!("{MINIMAL}user = \"ldapuser\"\n"));
    assert!(
            e.contains("9:8: service \"echo\": user \"ldapuser\": getent passwd ldapuser: no answer within 10s"),
            "{e}"
        );
    assert!(!e.contains("unknown user"), "{e}");
}

#[test]
fn a_failed_primary_group_lookup_is_an_error_not_the_number() {
    let e = errors(&format!("{MINIMAL}user = \"slowgroup\"\n"));
    assert!(
            e.contains("9:8: service \"echo\": primary group 4242 of user \"slowgroup\": getent group 4242: no answer within 10s"),
            "{e}"
        );
    // A gid that has no group at all is valid, and shown as its number.
    let plan = check(&format!("{MINIMAL}user = \"bare\"\n"), 0).unwrap();
    assert_eq!(plan.services[0].cred.as_ref().unwrap().group, "7777");
}

#[test]
fn a_root_daemon_refuses_programs_others_can_change() {
    let loose = MINIMAL.replace("program = \"echo\"", "program = \"loose\"");
    let e = errors(&loose);
    assert!(e.contains("8:11: service \"echo\": program \"loose\": refusing to run a program that a user other than root can change: /opt/h/loose is writable by others"), "{e}");
    // Not root: the daemon cannot raise anyone's privileges, no check.
    assert!(check(&loose, 1000).is_ok());
}

#[test]
fn root_by_another_name_is_refused() {
    let e = errors(&format!("{MINIMAL}user = \"toor\"\n"));
    assert!(e.contains("9:8: service \"echo\": user \"toor\" has uid 0: handlers run as root only when the config says user = \"root\""), "{e}");
    let e = errors(&format!("{MINIMAL}group = \"wheel0\"\n"));
    assert!(e.contains("9:9: service \"echo\": group \"wheel0\" has gid 0: handlers run with group root only when the config says group = \"root\""), "{e}");
    let plan = check(&format!("{MINIMAL}user = \"root\"\ngroup = \"root\"\n"), 0).unwrap();
    let cred = plan.services[0].cred.as_ref().unwrap();
    assert_eq!((cred.uid, cred.gid), (0, 0));
}

#[test]
fn users_and_groups_may_be_given_by_number() {
    // A number stands for the account with that id, as xinetd and
    // tcpserver take it: the same credentials as its name.
    let by_number = check(&format!("{MINIMAL}user = \"1000\"\ngroup = \"65534\"\n"), 0).unwrap();
    let by_name = check(
        &format!("{MINIMAL}user = \"alice\"\ngroup = \"nogroup\"\n"),
        0,
    )
    .unwrap();
    assert_eq!(by_number.services[0].cred, by_name.services[0].cred);
    assert_eq!(by_number.services[0].cred.as_ref().unwrap().user, "alice");
    let e = errors(&format!("{MINIMAL}user = \"4321\"\n"));
    assert!(e.contains("9:8: service \"echo\": no user has uid 4321 (a user given by number must be in the passwd database)"), "{e}");
    let e = errors(&format!("{MINIMAL}group = \"4321\"\n"));
    assert!(e.contains("9:9: service \"echo\": no group has gid 4321 (a group given by number must be in the group database)"), "{e}");
    // Root is never asked for by number.
    let e = errors(&format!("{MINIMAL}user = \"0\"\ngroup = \"0\"\n"));
    assert!(e.contains("9:8: service \"echo\": user \"0\" is root: handlers run as root only when the config says user = \"root\""), "{e}");
    assert!(e.contains("10:9: service \"echo\": group \"0\" is root: handlers run with group root only when the config says group = \"root\""), "{e}");
    // A daemon that is not root compares the number with its own.
    assert!(check(&format!("{MINIMAL}user = \"1000\"\n"), 1000).is_ok());
}

#[test]
fn env_may_not_redefine_connection_variables() {
    let e = errors(&format!("{MINIMAL}env = {{ TCPREMOTEIP = \"x\" }}\n"));
    assert!(
        e.contains("9:9: service \"echo\": env: \"TCPREMOTEIP\" is set by tinyinetd"),
        "{e}"
    );
    let e = errors(&format!("{MINIMAL}env = {{ \"1X\" = \"x\" }}\n"));
    assert!(e.contains("not a valid variable name"), "{e}");
}

#[test]
fn an_unknown_key_is_refused_with_the_nearest_one() {
    let e = errors(&format!("{MINIMAL}proxy_protocl = \"v1\"\n"));
    assert!(
        e.contains("unknown key \"proxy_protocl\"") && e.contains("proxy_protocol"),
        "{e}"
    );
}

#[test]
fn the_proxy_keys_are_read_and_checked() {
    let plan = check(
        &format!("{MINIMAL}proxy_protocol = \"any\"\ntrusted_proxies = [\"10.0.0.0/8\"]\nproxy_timeout = \"300ms\"\n"),
        0,
    )
    .expect("valid");
    let p = plan.services[0].proxy.as_ref().expect("proxy");
    assert_eq!(p.version, crate::plan::ProxyVersion::Any);
    assert_eq!(
        p.trusted,
        vec!["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]
    );
    assert_eq!(p.timeout, std::time::Duration::from_millis(300));
    let p = check(
        &format!("{MINIMAL}proxy_protocol = \"v1\"\ntrusted_proxies = [\"::1\"]\n"),
        0,
    )
    .expect("valid");
    assert_eq!(
        p.services[0].proxy.as_ref().map(|p| p.timeout),
        Some(crate::plan::DEFAULT_PROXY_TIMEOUT)
    );
    assert!(check(MINIMAL, 0).expect("valid").services[0]
        .proxy
        .is_none());
    let cases = [
        ("proxy_protocol = \"v1\"\n", "9:1: service \"echo\": \"proxy_protocol\" needs \"trusted_proxies\""),
        ("trusted_proxies = [\"::1\"]\n", "9:1: service \"echo\": \"trusted_proxies\" has no effect without \"proxy_protocol\""),
        ("proxy_timeout = \"1s\"\n", "9:1: service \"echo\": \"proxy_timeout\" has no effect without \"proxy_protocol\""),
        ("proxy_protocol = \"v3\"\ntrusted_proxies = [\"::1\"]\n", "9:18: service \"echo\": \"proxy_protocol\" must be \"v1\", \"v2\" or \"any\", not \"v3\""),
        ("proxy_protocol = \"v2\"\ntrusted_proxies = []\n", "10:1: service \"echo\": \"trusted_proxies\" needs at least one address or CIDR"),
        ("proxy_protocol = \"v2\"\ntrusted_proxies = [\"10.0.0.0/33\"]\n", "10:20: service \"echo\": \"trusted_proxies\": "),
        ("proxy_protocol = \"v2\"\ntrusted_proxies = [\"::1\"]\nproxy_timeout = \"101d\"\n", "11:17: service \"echo\": "),
        ("proxy_protocol = \"v2\"\ntrusted_proxies = [\"::1\"]\nproxy_timeout = \"0s\"\n", "11:17: service \"echo\": "),
        ("proxy_protocol = 2\ntrusted_proxies = [\"::1\"]\n", "9:18: service \"echo\": \"proxy_protocol\" must be a string"),
    ];
    for (keys, want) in cases {
        let e = errors(&format!("{MINIMAL}{keys}"));
        assert!(e.contains(want), "{keys}: {e}");
        assert!(!e.contains("reserved"), "{e}");
    }
}

#[test]
fn listen_forms() {
    assert_eq!(parse_listen("80"), Ok(ListenAddr::Any(80)));
    assert_eq!(
        parse_listen("[::1]:7"),
        Ok(ListenAddr::Addr("[::1]:7".parse().unwrap()))
    );
    assert!(parse_listen("[::1]").is_err());
    assert!(parse_listen("localhost:80").is_err());
    assert!(parse_listen("70000").is_err());
    assert!(parse_listen("0").is_err());
    assert!(parse_listen("").is_err());
}

#[test]
fn listen_address_errors_say_what_is_wrong() {
    let err = |s: &str| parse_listen(s).unwrap_err();
    assert_eq!(
        err("127.0.0.1:99999"),
        "invalid listen address \"127.0.0.1:99999\": the port must be 1 to 65535"
    );
    assert_eq!(
        err("[::1]:0"),
        "invalid listen address \"[::1]:0\": the port must be 1 to 65535"
    );
    assert_eq!(
            err("::1:19001"),
            "invalid listen address \"::1:19001\": an IPv6 address needs brackets, as in \"[::1]:19001\""
        );
    assert_eq!(
            err("localhost:19001"),
            "invalid listen address \"localhost:19001\": host names are not accepted; write an address, such as \"127.0.0.1:19001\" or \"[::1]:19001\""
        );
    assert_eq!(
        err("127.0.0.1"),
        "invalid listen address \"127.0.0.1\": expected \"IPv4:PORT\", \"[IPv6]:PORT\" or \"PORT\""
    );
}

#[test]
fn a_conflict_names_what_each_service_wrote() {
    let text = format!(
        "{MINIMAL}\n[[service]]\nname = \"other\"\nlisten = [\"9877\"]\nprogram = \"echo\"\n"
    );
    assert_eq!(
            errors(&text),
            "t.toml:12:11: service \"other\": listen address \"9877\" conflicts with \"127.0.0.1:9877\" of service \"echo\""
        );
}

#[test]
fn overlapping_addresses_within_one_service_are_errors() {
    let text = MINIMAL.replace(
        "listen = [\"127.0.0.1:9877\"]",
        "listen = [\"127.0.0.1:9877\", \"9877\"]",
    );
    assert_eq!(
            errors(&text),
            "t.toml:7:29: service \"echo\": listen address \"9877\" overlaps \"127.0.0.1:9877\" of this service"
        );
}

#[test]
fn suggestions_are_only_close_matches() {
    assert_eq!(
        suggest("max_instance", SERVICE_KEYS),
        " (did you mean \"max_instances\"?)"
    );
    assert_eq!(
        suggest("listne", SERVICE_KEYS),
        " (did you mean \"listen\"?)"
    );
    assert_eq!(suggest("dney", SERVICE_KEYS), " (did you mean \"deny\"?)");
    assert_eq!(suggest("ident", SERVICE_KEYS), "");
    assert_eq!(suggest("xyz", SERVICE_KEYS), "");
}

#[test]
fn wildcard_conflicts_with_specific_same_family() {
    let a: SocketAddr = "0.0.0.0:80".parse().unwrap();
    assert!(conflicts(a, "127.0.0.1:80".parse().unwrap()));
    assert!(!conflicts(a, "[::1]:80".parse().unwrap()));
    assert!(!conflicts(a, "127.0.0.1:81".parse().unwrap()));
}

#[test]
fn nets() {
    assert_eq!(
        parse_net("::ffff:10.1.2.3").unwrap(),
        "10.1.2.3/32".parse::<IpNet>().unwrap()
    );
    assert!(parse_net("10.0.0.0/33").is_err());
    assert!(parse_net("2001:db8::1/32")
        .unwrap_err()
        .contains("host bits"));
}

mod control;
mod not_root;
mod prop;
pub(in crate::config) use not_root::NotRoot;

#[test]
fn line_col_counts_characters() {
    assert_eq!(line_col("ab\ncé d", 7), (2, 4));
    assert_eq!(line_col("", 0), (1, 1));
}
