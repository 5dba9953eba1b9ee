//! A simulated Modbus TCP relay board: coils and discrete inputs in memory, for tests and for
//! `palmgate demo` (no hardware needed). It can be stopped and restarted on the same port (a
//! board power-cycling mid-pulse), and a coil can be stuck (writes ignored) to exercise the
//! read-back path. Every coil write is kept with its time, so a test can measure pulses.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_modbus::prelude::{ExceptionCode, Request, Response};
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};

pub const SIZE: usize = 64;
/// The board's pulse timer (policy `timed_pulse = { register_base = 256, unit_ms = 100 }`):
/// writing `n` to holding register `TIMED_BASE + coil` turns the coil on for `n × 100 ms`.
pub const TIMED_BASE: u16 = 256;
pub const TIMED_UNIT_MS: u64 = 100;

#[derive(Default)]
struct Board {
    coils: Vec<bool>,
    inputs: Vec<bool>,
    writes: Vec<(Instant, u16, bool)>,
    stuck: HashSet<u16>,
    /// Pulse timers started, and the one running on each coil.
    timers: u64,
    timer_of: std::collections::HashMap<u16, u64>,
    /// How long the board takes to answer a write (done at once, answered after).
    write_latency: std::time::Duration,
    /// Coils whose writes are answered with this exception (and not done).
    refuse: std::collections::HashMap<u16, ExceptionCode>,
}

#[derive(Clone)]
struct Service(Arc<Mutex<Board>>);

impl tokio_modbus::server::Service for Service {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, ExceptionCode>> + Send>,
    >;

    fn call(&self, req: Self::Request) -> Self::Future {
        let mut b = self.0.lock().expect("board lock");
        let latency = match req {
            Request::WriteSingleCoil(..) | Request::WriteSingleRegister(..) => b.write_latency,
            _ => std::time::Duration::ZERO,
        };
        let range = |addr: u16, cnt: u16| {
            let (a, n) = (usize::from(addr), usize::from(cnt));
            (a + n <= SIZE).then_some(a..a + n)
        };
        let answer = match req {
            Request::WriteSingleCoil(addr, _) if b.refuse.contains_key(&addr) => {
                Err(b.refuse[&addr])
            }
            Request::WriteSingleCoil(addr, on) if usize::from(addr) < SIZE => {
                // A direct write overrides the coil's pulse timer, as on real boards.
                b.timer_of.remove(&addr);
                if !b.stuck.contains(&addr) {
                    b.coils[usize::from(addr)] = on;
                }
                b.writes.push((Instant::now(), addr, on));
                Ok(Response::WriteSingleCoil(addr, on))
            }
            Request::ReadCoils(addr, cnt) => match range(addr, cnt) {
                Some(r) => Ok(Response::ReadCoils(b.coils[r].to_vec())),
                None => Err(ExceptionCode::IllegalDataAddress),
            },
            Request::ReadDiscreteInputs(addr, cnt) => match range(addr, cnt) {
                Some(r) => Ok(Response::ReadDiscreteInputs(b.inputs[r].to_vec())),
                None => Err(ExceptionCode::IllegalDataAddress),
            },
            Request::WriteSingleCoil(..) => Err(ExceptionCode::IllegalDataAddress),
            Request::WriteSingleRegister(reg, n)
                if reg >= TIMED_BASE && usize::from(reg - TIMED_BASE) < SIZE =>
            {
                let coil = reg - TIMED_BASE;
                if !b.stuck.contains(&coil) {
                    b.coils[usize::from(coil)] = true;
                }
                b.writes.push((Instant::now(), coil, true));
                b.timers += 1;
                let (board, generation) = (self.0.clone(), b.timers);
                b.timer_of.insert(coil, generation);
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(
                        u64::from(n) * TIMED_UNIT_MS,
                    ))
                    .await;
                    let mut b = board.lock().expect("board lock");
                    // A later timer on the same coil, or a power cycle, supersedes this one.
                    if b.timer_of.get(&coil) == Some(&generation) {
                        b.timer_of.remove(&coil);
                        if !b.stuck.contains(&coil) {
                            b.coils[usize::from(coil)] = false;
                        }
                        b.writes.push((Instant::now(), coil, false));
                    }
                });
                Ok(Response::WriteSingleRegister(reg, n))
            }
            Request::WriteSingleRegister(..) => Err(ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::IllegalFunction),
        };
        Box::pin(async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            answer
        })
    }
}

/// A running simulated board.
pub struct SimBoard {
    board: Arc<Mutex<Board>>,
    addr: SocketAddr,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for SimBoard {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(64)
}

impl SimBoard {
    /// Starts a board on `addr` (port 0: any free port).
    pub async fn start(addr: SocketAddr) -> std::io::Result<SimBoard> {
        let board = Arc::new(Mutex::new(Board {
            coils: vec![false; SIZE],
            inputs: vec![false; SIZE],
            ..Board::default()
        }));
        let listener = listen(addr).await?;
        let addr = listener.local_addr()?;
        let sim = SimBoard {
            board,
            addr,
            server: Mutex::new(None),
        };
        sim.serve(listener);
        Ok(sim)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let service = Service(self.board.clone());
        let task = tokio::spawn(async move {
            let server = Server::new(listener);
            let on_connected = |stream, peer| {
                let s = service.clone();
                async move { accept_tcp_connection(stream, peer, move |_| Ok(Some(s.clone()))) }
            };
            let _ = server.serve(&on_connected, |_| {}).await;
        });
        *self.server.lock().expect("lock") = Some(task);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `tcp://addr` for a site policy.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// Powers the board off: connections drop, nothing listens. Coils keep their state (a
    /// latching relay) unless `reset` (a board that comes back with every relay off).
    pub fn stop(&self) {
        if let Some(t) = self.server.lock().expect("lock").take() {
            t.abort();
        }
    }

    /// Powers the board on again on the same port.
    pub async fn restart(&self, reset: bool) -> std::io::Result<()> {
        let old = self.server.lock().expect("lock").take();
        if let Some(t) = old {
            t.abort();
            // The listener is closed only once the aborted task is gone.
            let _ = t.await;
        }
        if reset {
            let mut b = self.board.lock().expect("lock");
            b.coils.fill(false);
            b.timer_of.clear();
        }
        let listener = listen(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    pub fn coil(&self, n: u16) -> bool {
        self.board.lock().expect("lock").coils[usize::from(n)]
    }

    /// Whether the board's pulse timer is running on coil `n` (it will switch it OFF).
    pub fn timer_running(&self, n: u16) -> bool {
        self.board.lock().expect("lock").timer_of.contains_key(&n)
    }

    /// Forces a coil's state (e.g. a relay found ON at start-up).
    pub fn force_coil(&self, n: u16, on: bool) {
        self.board.lock().expect("lock").coils[usize::from(n)] = on;
    }

    /// Sets a discrete input (a door contact opening, a request-to-exit press).
    pub fn set_input(&self, n: u16, on: bool) {
        self.board.lock().expect("lock").inputs[usize::from(n)] = on;
    }

    /// From now on the board answers each write `latency` after doing it (a slow board, or a
    /// slow link: the gateway learns of the write that much later).
    pub fn set_write_latency(&self, latency: std::time::Duration) {
        self.board.lock().expect("lock").write_latency = latency;
    }

    /// While stuck, writes to the coil are acknowledged but change nothing.
    pub fn stick(&self, n: u16, stuck: bool) {
        let mut b = self.board.lock().expect("lock");
        if stuck {
            b.stuck.insert(n);
        } else {
            b.stuck.remove(&n);
        }
    }

    /// From now on writes to coil `n` are answered with `exception` and not done (`None`: done
    /// again).
    pub fn answer_writes(&self, n: u16, exception: Option<ExceptionCode>) {
        let mut b = self.board.lock().expect("lock");
        match exception {
            Some(e) => b.refuse.insert(n, e),
            None => b.refuse.remove(&n),
        };
    }

    /// Every coil write so far: (when, coil, value).
    pub fn writes(&self) -> Vec<(Instant, u16, bool)> {
        self.board.lock().expect("lock").writes.clone()
    }
}
