//! `[daemon] include`: the drop-in files. Each glob is resolved against the
//! main file's directory; the files it matches are read in name order
//! through the same checks as the main file (`trust::config`), each may
//! hold `[[service]]` tables only, and every service is compared with those
//! of the files before it, so a name or an address used twice names both
//! files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::de::DeValue;

use super::check::{esc, Checker, Value};
use super::cross::conflicts;
use super::service::Checked;
use super::{line_col, line_col_bytes, Problem, System};
use crate::plan::{Daemon, ListenAddr, Protocol};
use crate::trust::{self, Refusal};

/// Every message about the key has this context.
const CTX: &str = "daemon";

/// What the drop-ins define.
pub(super) struct Dropins {
    /// Each file read, in order, with its valid services.
    pub(super) files: Vec<(PathBuf, Vec<Checked>)>,
    /// `[[service]]` tables written in them, valid or not: a set whose
    /// services are all in drop-ins is not "nothing to serve".
    pub(super) defined: usize,
}

/// A service already in the set, with where it was written (`FILE:LINE:COL`).
struct Known {
    /// Its name and where the name was written.
    name: (String, String),
    /// Each socket it binds (a TCP and a UDP one never collide), the
    /// address as written, and where.
    sockets: Vec<(SocketAddr, Protocol, ListenAddr, String)>,
    /// Its Unix sockets, and where each was written.
    unix: Vec<(ListenAddr, String)>,
}

impl Known {
    fn of(file: &Path, text: &str, c: &Checked) -> Known {
        let at = |start: usize| {
            let (line, col) = line_col(text, start);
            format!("{}:{line}:{col}", file.display())
        };
        let mut sockets = Vec::new();
        let mut unix = Vec::new();
        for (addr, span) in c.service.listen.iter().zip(&c.listen_spans) {
            for sock in addr.sockets() {
                sockets.push((sock, c.service.protocol, addr.clone(), at(span.start)));
            }
            if addr.is_unix() {
                unix.push((addr.clone(), at(span.start)));
            }
        }
        Known {
            name: (c.service.name.clone(), at(c.name_span.start)),
            sockets,
            unix,
        }
    }
}

impl Checker<'_> {
    /// `include = ["GLOB", ...]`: checked here, matched by [`includes`](Self::includes).
    pub(super) fn include_key(&mut self, value: &Value<'_>) {
        let Some(items) = self.array(value, CTX, "include") else {
            return;
        };
        for item in items {
            let Some(s) = self.string(item, CTX, "include") else {
                continue;
            };
            match glob::Pattern::new(s) {
                _ if s.is_empty() => {
                    self.problem(item.span(), CTX, "\"include\": an empty pattern")
                }
                Ok(_) => self.include.push((s.to_string(), item.span())),
                Err(e) => self.problem(
                    item.span(),
                    CTX,
                    format!(
                        "\"include\": \"{}\" is not a valid glob: {} (at character {})",
                        esc(s),
                        e.msg,
                        e.pos + 1
                    ),
                ),
            }
        }
    }

    /// Reads and checks every drop-in of the main file at `main`, whose
    /// valid services are `before`. Their problems join this checker's, each
    /// naming its own file.
    pub(super) fn includes(
        &mut self,
        main: &Path,
        before: &[Checked],
        daemon: &Daemon,
        sys: &dyn System,
    ) -> Dropins {
        let mut known: Vec<Known> = before
            .iter()
            .map(|c| Known::of(main, self.text, c))
            .collect();
        let mut out = Dropins {
            files: Vec::new(),
            defined: 0,
        };
        for file in self.matches(main) {
            let Some(text) = self.read_dropin(&file, sys) else {
                continue;
            };
            let mut ck = Checker::new(&text);
            ck.file = Some(file.clone());
            let (defined, checked) = ck.dropin(&mut known, daemon, sys);
            out.defined += defined;
            self.problems.append(&mut ck.problems);
            self.warnings.append(&mut ck.warnings);
            out.files.push((file, checked));
        }
        out
    }

    /// The files the globs match: each glob's in name order, the globs in
    /// the order written, a file matched twice read once. A glob that
    /// matches nothing (a directory that does not exist) is not a problem.
    fn matches(&mut self, main: &Path) -> Vec<PathBuf> {
        let dir = main.parent().unwrap_or(Path::new(""));
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            // `*.toml` never picks up an editor's hidden `.x.toml` copy.
            require_literal_leading_dot: true,
        };
        let mut files: Vec<PathBuf> = Vec::new();
        for (pattern, span) in std::mem::take(&mut self.include) {
            let full = if Path::new(&pattern).is_absolute() || dir.as_os_str().is_empty() {
                pattern.clone()
            } else {
                format!(
                    "{}/{pattern}",
                    glob::Pattern::escape(&dir.to_string_lossy())
                )
            };
            let found = match glob::glob_with(&full, options) {
                Ok(found) => found,
                Err(e) => {
                    self.problem(span, CTX, format!("\"include\": {}", e.msg));
                    continue;
                }
            };
            for entry in found {
                match entry {
                    Ok(p) if !files.contains(&p) => files.push(p),
                    Ok(_) => {}
                    Err(e) => self.problem(
                        span.clone(),
                        CTX,
                        format!(
                            "include \"{}\": reading {}: {}",
                            esc(&pattern),
                            e.path().display(),
                            crate::text::io_reason(e.error())
                        ),
                    ),
                }
            }
        }
        files
    }

    /// The drop-in's text, after the main file's checks; `None` (with a
    /// problem naming the file) when it cannot be used.
    fn read_dropin(&mut self, file: &Path, sys: &dyn System) -> Option<String> {
        let mode = trust::Mode::for_euid(sys.identity().0);
        let placeless = |message: String| Problem {
            file: Some(file.to_path_buf()),
            line: 0,
            col: 0,
            context: String::new(),
            message,
        };
        let bytes = match trust::config(file, mode) {
            Ok(b) => b,
            // The same reason as for the main file: a root daemon runs
            // what a drop-in says.
            Err(Refusal::Untrusted(why)) => {
                self.problems.push(placeless(format!(
                    "refusing an included file that a user other than root can change: {why}"
                )));
                return None;
            }
            Err(Refusal::Unusable(why, _)) => {
                self.problems
                    .push(placeless(format!("cannot read the included file: {why}")));
                return None;
            }
        };
        match String::from_utf8(bytes) {
            Ok(text) => Some(text),
            Err(e) => {
                let (line, col) = line_col_bytes(e.as_bytes(), e.utf8_error().valid_up_to());
                let mut p = placeless("the file is not valid UTF-8".into());
                (p.line, p.col) = (line, col);
                self.problems.push(p);
                None
            }
        }
    }

    /// Checks this checker's text as a drop-in against the services `known`
    /// so far, adding its own. Returns the tables written and the valid
    /// services.
    fn dropin(
        &mut self,
        known: &mut Vec<Known>,
        daemon: &Daemon,
        sys: &dyn System,
    ) -> (usize, Vec<Checked>) {
        let Some(root) = self.toml() else {
            return (0, Vec::new());
        };
        let mut array: &[Value<'_>] = &[];
        for (key, value) in root.iter() {
            match (key.get_ref().as_ref(), value.get_ref()) {
                ("service", DeValue::Array(a)) => array = a.as_ref(),
                ("service", other) => self.problem(
                    value.span(),
                    "",
                    format!(
                        "\"service\" must be an array of tables ([[service]]), not {}",
                        other.type_str()
                    ),
                ),
                (other, _) => self.problem(
                    key.span(),
                    "",
                    format!(
                        "an included file may hold [[service]] tables only, not \"{}\"{}",
                        esc(other),
                        if other == "daemon" {
                            " ([daemon] belongs in the main file)"
                        } else {
                            ""
                        }
                    ),
                ),
            }
        }
        let checked = self.services(array, daemon, sys);
        self.cross_check(&checked);
        for c in &checked {
            self.against(known, c);
        }
        let file = self.file.clone().unwrap_or_default();
        known.extend(checked.iter().map(|c| Known::of(&file, self.text, c)));
        (array.len(), checked)
    }

    /// Compares one service of this drop-in with those of the files before.
    fn against(&mut self, known: &[Known], c: &Checked) {
        let s = &c.service;
        let ctx = format!("service \"{}\"", s.name);
        if let Some(k) = known.iter().find(|k| k.name.0 == s.name) {
            let m = format!(
                "duplicate service name \"{}\" (first defined at {})",
                esc(&s.name),
                k.name.1
            );
            self.problem(c.name_span.clone(), &ctx, m);
        }
        for (addr, span) in s.listen.iter().zip(&c.listen_spans) {
            let clash = addr.sockets().into_iter().find_map(|sock| {
                known.iter().find_map(|k| {
                    k.sockets
                        .iter()
                        .find(|(other, p, _, _)| *p == s.protocol && conflicts(*other, sock))
                        .map(|(_, _, wrote, at)| (&k.name.0, wrote.clone(), at))
                })
            });
            let same_unix = known.iter().find_map(|k| {
                let found = k.unix.iter().find(|(a, _)| a == addr);
                found.map(|(a, at)| (&k.name.0, a.clone(), at))
            });
            if let Some((other, wrote, at)) = clash.or(same_unix) {
                let m = if wrote == *addr {
                    format!(
                        "listen address \"{addr}\" is already used by service \"{other}\" at {at}"
                    )
                } else {
                    format!(
                        "listen address \"{addr}\" conflicts with \"{wrote}\" of service \"{other}\" at {at}"
                    )
                };
                self.problem(span.clone(), &ctx, m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};

    use crate::config;

    /// A main file `tinyinetd.toml` in a fresh directory, with drop-ins
    /// under `tinyinetd.d/`: `(name, text)`.
    fn tree(main: &str, dropins: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let main_path = dir.path().join("tinyinetd.toml");
        fs::write(&main_path, main).expect("write main");
        if !dropins.is_empty() {
            fs::create_dir(dir.path().join("tinyinetd.d")).expect("mkdir");
        }
        for (name, text) in dropins {
            fs::write(dir.path().join("tinyinetd.d").join(name), text).expect("write drop-in");
        }
        (dir, main_path)
    }

    fn service(name: &str, port: u16) -> String {
        format!("[[service]]\nname = \"{name}\"\nlisten = [\"127.0.0.1:{port}\"]\nprogram = \"/bin/sh\"\n")
    }

    const INCLUDE: &str = "[daemon]\ninclude = [\"tinyinetd.d/*.toml\"]\n";

    #[test]
    fn a_unix_socket_of_an_earlier_file_is_not_served_twice() {
        let unix = |name: &str| {
            format!("[[service]]\nname = \"{name}\"\nlisten = [\"unix:/run/tux-dup.sock\"]\nprogram = \"/bin/sh\"\n")
        };
        let (_d, main) = tree(
            &format!("{INCLUDE}{}", unix("a")),
            &[("b.toml", &unix("b"))],
        );
        let e = load(&main).unwrap_err();
        assert!(
            e.contains("b.toml:3:11: service \"b\": listen address \"unix:/run/tux-dup.sock\" is already used by service \"a\""),
            "{e}"
        );
        let (_d, main) = tree(&format!("{}{}", unix("a"), unix("b")), &[]);
        let e = load(&main).unwrap_err();
        assert!(e.contains(":7:11: service \"b\": listen address \"unix:/run/tux-dup.sock\" is already used by service \"a\""), "{e}");
    }

    fn load(path: &Path) -> Result<crate::plan::Plan, String> {
        config::load_with(path, false, &config::RealSystem).map_err(|e| e.to_string())
    }

    #[test]
    fn drop_ins_join_the_set_in_name_order_and_say_where_they_came_from() {
        let main = format!("{INCLUDE}{}", service("main", 9100));
        let (dir, path) = tree(
            &main,
            &[
                ("b.toml", &service("bee", 9102)),
                ("a.toml", &service("ay", 9101)),
                ("c.conf", &service("ignored", 9103)),
                (".hidden.toml", &service("hidden", 9104)),
            ],
        );
        let plan = load(&path).expect("valid set");
        let names: Vec<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["main", "ay", "bee"]);
        let d = dir.path().join("tinyinetd.d");
        assert_eq!(plan.origin.get("ay"), Some(&d.join("a.toml")));
        assert_eq!(plan.origin.get("main"), None);
        let report = config::describe(&plan);
        let lines: Vec<&str> = report.lines().collect();
        assert!(!lines[0].contains(" file="), "{report}");
        assert!(
            lines[1].ends_with(&format!(" file={}", d.join("a.toml").display())),
            "{report}"
        );
    }

    #[test]
    fn a_glob_that_matches_nothing_is_not_an_error() {
        let main = format!("{INCLUDE}{}", service("main", 9110));
        let (_dir, path) = tree(&main, &[]);
        assert_eq!(load(&path).expect("valid").services.len(), 1);
        // All services in drop-ins is a set with something to serve.
        let (_dir, path) = tree(INCLUDE, &[("x.toml", &service("x", 9111))]);
        assert_eq!(load(&path).expect("valid").services.len(), 1);
        // Nothing anywhere still is not.
        let (_dir, path) = tree(INCLUDE, &[]);
        assert!(load(&path).unwrap_err().contains("nothing to serve"));
    }

    #[test]
    fn the_same_port_in_two_drop_ins_names_both_files_and_lines() {
        let (dir, path) = tree(
            INCLUDE,
            &[
                ("a.toml", &service("ay", 9120)),
                ("b.toml", &format!("\n\n{}", service("bee", 9120))),
            ],
        );
        let d = dir.path().join("tinyinetd.d");
        assert_eq!(
            load(&path).unwrap_err(),
            format!(
                "{}:5:11: service \"bee\": listen address \"127.0.0.1:9120\" is already used by service \"ay\" at {}:3:11",
                d.join("b.toml").display(),
                d.join("a.toml").display()
            )
        );
    }

    #[test]
    fn a_name_in_the_main_file_and_a_drop_in_names_both() {
        let main = format!("{INCLUDE}{}", service("twice", 9130));
        let (dir, path) = tree(&main, &[("a.toml", &service("twice", 9131))]);
        assert_eq!(
            load(&path).unwrap_err(),
            format!(
                "{}:2:8: service \"twice\": duplicate service name \"twice\" (first defined at {}:4:8)",
                dir.path().join("tinyinetd.d/a.toml").display(),
                path.display()
            )
        );
    }

    #[test]
    fn an_included_file_holds_services_only_and_its_errors_name_it() {
        let bad = format!(
            "{}[daemon]\nlog = \"stderr\"\n",
            service("x", 9140).replace("/bin/sh", "/no/such")
        );
        let main = format!("{INCLUDE}{}", service("main", 9141));
        let (dir, path) = tree(&main, &[("x.toml", &bad), ("y.toml", "[[service\n")]);
        let x = dir.path().join("tinyinetd.d/x.toml");
        let y = dir.path().join("tinyinetd.d/y.toml");
        let err = load(&path).unwrap_err();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 3, "{err}");
        assert!(
            lines[0].starts_with(&format!("{}:4:11: service \"x\": ", x.display())),
            "{err}"
        );
        assert_eq!(
            lines[1],
            format!(
                "{}:5:2: an included file may hold [[service]] tables only, not \"daemon\" ([daemon] belongs in the main file)",
                x.display()
            )
        );
        assert!(
            lines[2].starts_with(&format!("{}:1:", y.display())),
            "{err}"
        );
    }

    #[test]
    fn include_values_are_checked() {
        let (_dir, path) = tree("[daemon]\ninclude = [\"a/[*.toml\", \"\", 3]\n", &[]);
        let err = load(&path).unwrap_err();
        let p = path.display();
        assert!(
            err.contains(&format!(
                "{p}:2:12: daemon: \"include\": \"a/[*.toml\" is not a valid glob"
            )),
            "{err}"
        );
        assert!(
            err.contains(&format!("{p}:2:25: daemon: \"include\": an empty pattern")),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "{p}:2:29: daemon: \"include\" must be a string, not integer"
            )),
            "{err}"
        );
    }
}
