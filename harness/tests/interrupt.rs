//! What an interrupted bitprobe does with the probe servers it started: the Ctrl-C / SIGTERM
//! handler calls `probe::wire::kill_all_servers` and exits 130. The thread that was waiting on
//! a killed server must not report it as a crash first (that error reached `main` and the exit
//! status became 2 under load), nor start a new server. A test binary of its own: once the
//! servers are killed, no server starts again in this process.

mod common;

use common::alive;
use probe::wire::RemoteProbe;
use probe::{Capture, OpenRequest, Probe};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn servers_killed_by_an_interrupt_are_not_reported_as_crashes_nor_restarted() {
    let model = engine::forge::forged("tiny-i2s", 1).unwrap();
    let open = OpenRequest::new(&model).threads(1);
    let hanging = |open: OpenRequest| {
        RemoteProbe::spawn(
            "hanging probe",
            common::broken_probe(),
            &["--defect", "hang"],
            open,
        )
    };

    // A forward that never answers, as a probe computing when Ctrl-C comes.
    let (started, pid) = mpsc::channel();
    let (ended, result) = mpsc::channel();
    let first = open.clone();
    std::thread::spawn(move || {
        let mut p = hanging(first).unwrap();
        started.send(p.pid().unwrap()).unwrap();
        let r = p.forward(&[1, 2, 3], &Capture::none());
        let _ = ended.send(r.map(|_| ()).map_err(|e| e.to_string()));
    });
    let pid = pid.recv_timeout(Duration::from_secs(60)).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    probe::wire::kill_all_servers();
    let t = Instant::now();
    while alive(pid) && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid), "the server {pid} outlived kill_all_servers");
    assert_eq!(
        result.recv_timeout(Duration::from_secs(2)).ok(),
        None,
        "the killed server was reported before the handler's exit"
    );

    // A probe opened after the interrupt (another trial about to start) does not start.
    let (ended, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = ended.send(hanging(open).map(|p| p.pid()).map_err(|e| e.to_string()));
    });
    assert_eq!(
        result.recv_timeout(Duration::from_secs(2)).ok(),
        None,
        "a probe server started after the interrupt"
    );
}
