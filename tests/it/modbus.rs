//! The relay device task against the in-process simulated board (a real Modbus TCP peer).

use palmgate::modbus::sim::SimBoard;
use palmgate::modbus::{Address, Command, DeviceSpec, Report, Timing, spawn_device};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

fn spec(board: &SimBoard) -> DeviceSpec {
    DeviceSpec {
        id: "board-1".into(),
        address: Address::parse(&board.url()).unwrap(),
        unit: 1,
        inputs: vec![0],
    }
}

fn fast() -> Timing {
    Timing {
        connect: Duration::from_millis(300),
        response: Duration::from_millis(300),
        poll: Duration::from_millis(50),
        backoff_max: Duration::from_millis(300),
    }
}

async fn wait_for(
    rx: &mut mpsc::UnboundedReceiver<Report>,
    what: impl Fn(&Report) -> bool,
) -> Report {
    timeout(Duration::from_secs(10), async {
        loop {
            let r = rx.recv().await.expect("device task alive");
            if what(&r) {
                return r;
            }
        }
    })
    .await
    .expect("report in time")
}

async fn until(cond: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < end, "condition not reached in 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulse_is_on_then_off_after_the_hold() {
    let board = SimBoard::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let dev = spawn_device(spec(&board), fast(), tx);
    wait_for(&mut rx, |r| matches!(r, Report::Up { .. })).await;
    let sent = Instant::now();
    dev.send(Command::Pulse {
        coil: 2,
        hold: Duration::from_millis(300),
        tag: "7".into(),
        timed: None,
    })
    .unwrap();
    wait_for(&mut rx, |r| {
        matches!(
            r,
            Report::Coil {
                coil: 2,
                on: true,
                tag, .. } if tag == "7"
        )
    })
    .await;
    assert!(board.coil(2));
    wait_for(&mut rx, |r| {
        matches!(
            r,
            Report::Coil {
                coil: 2,
                on: false,
                tag, .. } if tag == "7"
        )
    })
    .await;
    assert!(!board.coil(2));
    let w = board.writes();
    let on = w.iter().find(|(_, c, v)| *c == 2 && *v).unwrap().0;
    let off = w.iter().find(|(_, c, v)| *c == 2 && !*v).unwrap().0;
    assert!(
        on - sent < Duration::from_millis(500),
        "coil on after {:?}",
        on - sent
    );
    let held = off - on;
    assert!(
        held >= Duration::from_millis(300) && held < Duration::from_millis(600),
        "held {held:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_coil_is_retried_until_it_reads_off() {
    let board = SimBoard::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let dev = spawn_device(spec(&board), fast(), tx);
    wait_for(&mut rx, |r| matches!(r, Report::Up { .. })).await;
    dev.send(Command::Pulse {
        coil: 0,
        hold: Duration::from_millis(100),
        tag: "1".into(),
        timed: None,
    })
    .unwrap();
    wait_for(&mut rx, |r| {
        matches!(
            r,
            Report::Coil {
                coil: 0,
                on: true,
                ..
            }
        )
    })
    .await;
    board.stick(0, true);
    let failed = wait_for(&mut rx, |r| {
        matches!(
            r,
            Report::CoilFailed {
                coil: 0,
                on: false,
                ..
            }
        )
    })
    .await;
    assert!(matches!(failed, Report::CoilFailed { .. }));
    assert!(board.coil(0), "still stuck on");
    board.stick(0, false);
    wait_for(&mut rx, |r| {
        matches!(
            r,
            Report::Coil {
                coil: 0,
                on: false,
                ..
            }
        )
    })
    .await;
    assert!(!board.coil(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_that_restarts_mid_pulse_ends_locked() {
    let board = SimBoard::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let dev = spawn_device(spec(&board), fast(), tx);
    wait_for(&mut rx, |r| matches!(r, Report::Up { .. })).await;
    dev.send(Command::Pulse {
        coil: 1,
        hold: Duration::from_secs(30),
        tag: "3".into(),
        timed: None,
    })
    .unwrap();
    wait_for(&mut rx, |r| {
        matches!(
            r,
            Report::Coil {
                coil: 1,
                on: true,
                ..
            }
        )
    })
    .await;
    board.stop();
    wait_for(&mut rx, |r| matches!(r, Report::Down { .. })).await;
    // A latching relay keeps its state through the outage.
    assert!(board.coil(1));
    board.restart(false).await.unwrap();
    wait_for(&mut rx, |r| matches!(r, Report::Up { .. })).await;
    until(|| !board.coil(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wanted_states_are_driven_at_connect_and_inputs_reported() {
    let board = SimBoard::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    board.force_coil(3, true); // found ON at start-up
    let (tx, mut rx) = mpsc::unbounded_channel();
    let dev = spawn_device(spec(&board), fast(), tx);
    dev.send(Command::Want {
        coil: 3,
        on: false,
        cut_pulse: false,
        lease: None,
    })
    .unwrap();
    dev.send(Command::Want {
        coil: 4,
        on: true,
        cut_pulse: false,
        lease: None,
    })
    .unwrap();
    until(|| !board.coil(3) && board.coil(4)).await;
    wait_for(&mut rx, |r| {
        matches!(
            r,
            Report::Input {
                input: 0,
                on: false,
                ..
            }
        )
    })
    .await;
    board.set_input(0, true);
    wait_for(&mut rx, |r| {
        matches!(
            r,
            Report::Input {
                input: 0,
                on: true,
                ..
            }
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_board_is_reported_not_fatal() {
    let board = SimBoard::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let s = spec(&board);
    board.stop();
    drop(board);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let dev = spawn_device(s, fast(), tx);
    wait_for(&mut rx, |r| matches!(r, Report::Down { .. })).await;
    dev.send(Command::Pulse {
        coil: 0,
        hold: Duration::from_millis(100),
        tag: "9".into(),
        timed: None,
    })
    .unwrap();
    let r = wait_for(&mut rx, |r| matches!(r, Report::CoilFailed { .. })).await;
    // Never sent: certainly not opened, and the grant it served is named.
    assert!(
        matches!(&r, Report::CoilFailed { on: true, tag, refused: true, .. } if tag == "9"),
        "{r:?}"
    );
}

/// A pulse's ON the board answers with an exception is reported `refused` with the pulse's tag
/// (the door certainly did not open: the core undoes the grant's zone movement); one that got
/// no answer in time is reported with `refused` false (it may have opened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_pulse_is_told_apart_from_an_unanswered_one() {
    let board = SimBoard::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let dev = spawn_device(spec(&board), fast(), tx);
    wait_for(&mut rx, |r| matches!(r, Report::Up { .. })).await;
    let pulse = |coil: u16, hold_ms: u64, tag: &str, timed: Option<(u16, u16)>| {
        dev.send(Command::Pulse {
            coil,
            hold: Duration::from_millis(hold_ms),
            tag: tag.into(),
            timed,
        })
        .unwrap();
    };
    // The failure reported for `coil`'s pulse `tag`: whether it says `refused`.
    async fn refused(rx: &mut mpsc::UnboundedReceiver<Report>, coil: u16, tag: &str) -> bool {
        let r = wait_for(
            rx,
            |r| matches!(r, Report::CoilFailed { coil: c, .. } if *c == coil),
        )
        .await;
        match &r {
            Report::CoilFailed {
                on: true,
                tag: t,
                refused,
                ..
            } if t == tag => *refused,
            other => panic!("{other:?}"),
        }
    }
    // A coil the board does not have: IllegalDataAddress.
    let missing = palmgate::modbus::sim::SIZE as u16;
    pulse(missing, 100, "cap-1", None);
    assert!(refused(&mut rx, missing, "cap-1").await);
    // An exception that does not say the write was not done (a gateway's "target device
    // failed to respond"): unknown.
    board.answer_writes(3, Some(tokio_modbus::ExceptionCode::GatewayTargetDevice));
    pulse(3, 100, "cap-3", None);
    assert!(!refused(&mut rx, 3, "cap-3").await);
    // Refused while the coil is on (another pulse running): the door was open anyway.
    pulse(4, 1500, "cap-4", None);
    wait_for(&mut rx, |r| {
        matches!(
            r,
            Report::Coil {
                coil: 4,
                on: true,
                ..
            }
        )
    })
    .await;
    board.answer_writes(4, Some(tokio_modbus::ExceptionCode::IllegalDataValue));
    pulse(4, 100, "cap-5", None);
    assert!(!refused(&mut rx, 4, "cap-5").await);
    // The same refusal with the coil off: certainly locked.
    board.answer_writes(5, Some(tokio_modbus::ExceptionCode::IllegalDataValue));
    pulse(5, 100, "cap-6", None);
    assert!(refused(&mut rx, 5, "cap-6").await);
    // A board-timed pulse whose register write the board took but whose coil reads back OFF:
    // it may still be timing it, so unknown.
    board.stick(6, true);
    let register = palmgate::modbus::sim::TIMED_BASE + 6;
    pulse(6, 300, "cap-7", Some((register, 3)));
    assert!(!refused(&mut rx, 6, "cap-7").await);
    // Slower than the response timeout (300 ms): unknown.
    board.set_write_latency(Duration::from_millis(600));
    pulse(0, 100, "cap-2", None);
    assert!(!refused(&mut rx, 0, "cap-2").await);
}
