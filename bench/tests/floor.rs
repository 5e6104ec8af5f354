//! End to end: the built-in echo server and a tiny, bounded floor run
//! through the real binary (coordinator, worker processes, result files).

use std::process::Command;

#[test]
fn a_tiny_floor_run_writes_a_result() {
    let out = tempfile::tempdir().expect("tempdir");
    let status = Command::new(env!("CARGO_BIN_EXE_parley-bench"))
        .args([
            "floor",
            "--sessions",
            "20",
            "--hold",
            "1",
            "--login-concurrency",
            "2",
            "--login-duration",
            "1",
            "--echo-sessions",
            "4",
            "--rate",
            "400",
            "--duration",
            "1",
            "--workers",
            "2",
            "--out",
        ])
        .arg(out.path())
        .status()
        .expect("runs parley-bench");
    assert!(status.success(), "parley-bench floor failed: {status}");

    let json = std::fs::read_dir(out.path())
        .expect("out dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a result file");
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("readable")).expect("JSON");
    assert_eq!(result["scenario"], "floor");
    let figure = |name: &str| {
        result["figures"]
            .as_array()
            .expect("figures")
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("figure {name} missing"))["value"]
            .as_f64()
            .expect("a number")
    };
    assert_eq!(figure("sessions"), 20.0);
    assert!(figure("bytes_per_session") > 0.0);
    assert!(figure("logins_per_s") > 0.0);
    assert_eq!(figure("lost"), 0.0, "every echo came back");
    assert_eq!(result["counters"]["echoed"], 400);
    // The rate is what the machine sustained (echoes over the time they
    // took, at least the second of sending): a figure to print, not to
    // assert, since a loaded machine stretches the time. It is at most the
    // offered 400 a second, and above zero once every echo came back.
    let rate = figure("msgs_per_s");
    assert!(rate > 0.0 && rate <= 400.0, "msgs_per_s {rate}");
    eprintln!("floor: {rate} echoes a second sustained (400 offered)");
    assert!(json.with_extension("svg").exists(), "the plot was written");
    assert!(
        json.with_extension("txt").exists(),
        "the summary was written"
    );
}
