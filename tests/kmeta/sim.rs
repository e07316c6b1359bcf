//! The quorum simulation (`src/sim`): regression cases for the two ways acknowledged writes
//! were lost, and a bounded number of random seeds (`kmeta sim` runs thousands).

use kmeta::sim::{run, Scenario, SimOptions, SimReport};

fn assert_clean(report: &SimReport) {
    assert!(
        report.violations.is_empty(),
        "seed {}: {} violations:\n  {}\nfaults:\n  {}",
        report.seed,
        report.violations.len(),
        report.violations.join("\n  "),
        report.faults.join("\n  ")
    );
    assert!(
        report.acknowledged > 0,
        "seed {}: nothing was acknowledged",
        report.seed
    );
}

/// Issue 10, trigger 1: a restarted controller took itself for active on its old term, kept a
/// refused write in its speculative state, and later committed a decision made on it.
#[test]
fn a_full_restart_never_commits_a_decision_made_on_a_refused_write() {
    for seed in 1..=2 {
        let report = run(
            seed,
            &SimOptions {
                scenario: Scenario::FullRestart,
                ..SimOptions::default()
            },
        );
        assert_clean(&report);
    }
}

/// Issue 10, trigger 2: a pause of the active controller (twice the election timeout) made it
/// drop proposals while keeping them in its speculative state.
#[test]
fn a_paused_active_controller_never_commits_a_decision_made_on_a_dropped_proposal() {
    for seed in 1..=2 {
        let report = run(
            seed,
            &SimOptions {
                scenario: Scenario::LeaderPause,
                ..SimOptions::default()
            },
        );
        assert_clean(&report);
    }
}
