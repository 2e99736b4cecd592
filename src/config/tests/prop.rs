//! Property tests of the configuration checker: any text gives a plan or
//! errors with positions, never a panic.

use super::*;
use proptest::prelude::*;

/// Config-shaped text: known keys (and near misses) with values of
/// every TOML type, in tables and arrays of tables.
fn configish() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        proptest::sample::select(SERVICE_KEYS.to_vec()).prop_map(String::from),
        proptest::sample::select(DAEMON_KEYS.to_vec()).prop_map(String::from),
        "[a-z_]{1,12}",
    ];
    let value = prop_oneof![
        "\"[ -~]{0,24}\"",
        "-?[0-9]{1,22}",
        Just("true".to_string()),
        Just("[\"127.0.0.1:80\", \"[::1]:80\", \"80\"]".to_string()),
        Just("{ A = \"b\" }".to_string()),
        Just("\"10s\"".to_string()),
        Just("1.5".to_string()),
        Just("1979-05-27".to_string()),
        "[ -~]{0,16}",
    ];
    let line = (key, value).prop_map(|(k, v)| format!("{k} = {v}"));
    let header = prop_oneof![
        Just("[daemon]".to_string()),
        Just("[[service]]".to_string()),
        Just("[service]".to_string()),
        "\\[[ -~]{0,8}",
    ];
    proptest::collection::vec(prop_oneof![line, header], 0..24).prop_map(|v| v.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_text_is_ok_or_errors_never_a_panic(text in "\\PC{0,400}") {
        let _ = parse(Path::new("p.toml"), &text, &FakeSystem { euid: 0 });
    }

    #[test]
    fn configish_text_gives_errors_with_positions(text in configish()) {
        if let Err(e) = parse(Path::new("p.toml"), &text, &FakeSystem { euid: 0 }) {
            prop_assert!(!e.problems.is_empty());
            for p in &e.problems {
                prop_assert!(p.line >= 1 && p.col >= 1, "{:?}", p);
                prop_assert!(p.line <= text.lines().count().max(1), "{:?}", p);
                prop_assert!(!p.message.contains('\n'));
            }
        }
    }

    #[test]
    fn listen_and_net_parsers_never_panic(s in "\\PC{0,40}") {
        let _ = parse_listen(&s);
        let _ = parse_net(&s);
    }
}
