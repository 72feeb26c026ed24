//! `mesh-pause` stops at once, with status 0, on SIGTERM and SIGINT, and reaps the zombies
//! of its children. One test, so that no other test's child is reaped under it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

fn wait_with_limit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < limit, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn stops_on_sigterm_and_sigint_and_reaps_zombies() {
    for signal in [Signal::TERM, Signal::INT] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-pause"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        // Give it a moment to install its handlers (before that a signal kills it anyway).
        std::thread::sleep(Duration::from_millis(200));
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
        kill_process(pid, signal).unwrap();
        let status = wait_with_limit(&mut child, Duration::from_secs(2));
        assert!(status.success(), "{signal:?}: {status}");
    }

    // A child that exits and is never waited for is a zombie until reap() collects it.
    let child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    drop(child);
    let started = Instant::now();
    let mut reaped = 0;
    while reaped == 0 && started.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
        reaped += mesh_images::pause::reap();
    }
    assert_eq!(reaped, 1);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the zombie {pid} is still there"
    );
}
