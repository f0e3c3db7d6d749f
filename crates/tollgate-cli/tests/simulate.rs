//! `tollgate simulate` reproduces the demo's shape, on virtual time.

use std::time::Duration;

use tollgate_cli::simulate;

#[tokio::test(start_paused = true)]
async fn clone_runs_one_after_another_and_tts_many_times_faster() {
    let scenarios = simulate::all(3, 7, false).await;
    assert_eq!(scenarios.len(), 4);
    let find = |name: &str, users: usize| {
        scenarios
            .iter()
            .find(|s| s.service.name == name && s.users == users)
            .unwrap()
    };
    for users in [2, 5] {
        let clone = find("clone", users);
        assert_eq!(clone.jobs.len(), 3 * users);
        // One job at a time, each of 0.8 s or more against a rate of one
        // a second: the jobs run back to back, so the wall time is the sum
        // of the work (give or take the first second's wait).
        let gap = clone.wall().abs_diff(clone.work);
        assert!(
            gap <= Duration::from_secs(1),
            "{:?} against {:?}",
            clone.wall(),
            clone.work
        );
        assert!(
            clone.bound_by().starts_with("concurrency"),
            "{}",
            clone.bound_by()
        );

        let tts = find("tts", users);
        assert!(
            tts.wall() * 10 < clone.wall(),
            "tts {:?} against clone {:?}",
            tts.wall(),
            clone.wall()
        );
        // Five requests a second bind before the four workers do.
        assert!(tts.throughput() <= 5.0 + 1e-9, "{}", tts.throughput());
    }
    let five = find("tts", 5);
    assert!(
        five.bound_by().starts_with("the rate"),
        "{}",
        five.bound_by()
    );

    // The same seed, the same run; another seed, other work.
    let again = simulate::all(3, 7, false).await;
    assert_eq!(again[1].work, scenarios[1].work);
    assert_eq!(again[1].wall(), scenarios[1].wall());
    let other = simulate::all(3, 8, false).await;
    assert_ne!(other[1].work, scenarios[1].work);

    let svg = simulate::svg(&scenarios);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.matches("<rect").count() > 3 * 2 + 3 * 5);
}
