//! Slow clients (slowloris): heads, bodies and idle connections that take too long are cut off.

use super::read_response;
use crate::fixtures::{Options, TestServer, send};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes (EOF or reset) or `limit` passes: (bytes read, when it closed).
async fn until_closed(conn: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, Some(start.elapsed())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, None),
        }
    }
}

/// Writes `bytes` one `step` at a time, `every` apart, until done or the peer is gone; returns
/// when the peer was found gone (a write failed), if it was.
async fn dribble(
    conn: &mut TcpStream,
    bytes: &[u8],
    step: usize,
    every: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    for c in bytes.chunks(step) {
        if conn.write_all(c).await.is_err() || conn.flush().await.is_err() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(every).await;
    }
    None
}

/// Slowloris and friends, with `http.header_timeout = 1s` and `http.body_timeout = 2s`:
/// a silent connection, a head sent a byte at a time, a body sent 10 bytes at a time, an idle
/// kept-alive connection and 200 silent connections are all closed within their limit, while
/// a steady stream of normal requests is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let mut s = TestServer::prepare(Options::default());
    s.launch_env(&[
        ("PALMGATE_HTTP_HEADER_TIMEOUT", "1s"),
        ("PALMGATE_HTTP_BODY_TIMEOUT", "2s"),
    ])
    .await;
    let (_, key) = s.create_partner("Patient").await;
    let addr = s.base_url.trim_start_matches("http://").to_string();
    let slack = Duration::from_millis(1500);

    // Normal traffic all along: a fresh connection per request.
    let normal = {
        let url = s.url("/v1/identify");
        let key = key.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let (mut ok, mut worst) = (0, Duration::ZERO);
            let end = Instant::now() + Duration::from_secs(4);
            while Instant::now() < end {
                let t = Instant::now();
                let r = client.post(&url).header("x-api-key", &key).send().await;
                let status = r.map(|r| r.status().as_u16()).unwrap_or(0);
                assert!(
                    status == 201 || status == 429,
                    "a normal request got {status}"
                );
                ok += 1;
                worst = worst.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            (ok, worst)
        })
    };

    // 1. Connects and says nothing.
    let silent = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut c = TcpStream::connect(&addr).await.unwrap();
            until_closed(&mut c, Duration::from_secs(10)).await
        })
    };
    // 2. 200 more that say nothing.
    let crowd = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut conns = Vec::new();
            for _ in 0..200 {
                conns.push(TcpStream::connect(&addr).await.unwrap());
            }
            let mut closed = 0;
            for c in &mut conns {
                if until_closed(c, Duration::from_secs(6)).await.1.is_some() {
                    closed += 1;
                }
            }
            closed
        })
    };
    // 3. A head, one byte every 100 ms, never finished (progress does not buy time).
    let slow_head = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut c = TcpStream::connect(&addr).await.unwrap();
            let mut head =
                format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\nx-slow: ").into_bytes();
            head.extend(std::iter::repeat_n(b'a', 100));
            let gone = dribble(&mut c, &head, 1, Duration::from_millis(100)).await;
            let (bytes, closed) = until_closed(&mut c, Duration::from_millis(100)).await;
            (gone, bytes, closed)
        })
    };
    // 4. A body, 10 bytes every 200 ms of 1000 announced.
    let slow_body = {
        let addr = addr.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let mut c = TcpStream::connect(&addr).await.unwrap();
            let head = format!(
                "POST /v1/enroll HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {key}\r\n\
                 content-type: application/json\r\ncontent-length: 1000\r\n\r\n"
            );
            c.write_all(head.as_bytes()).await.unwrap();
            let t = Instant::now();
            let (mut rd, mut wr) = c.split();
            let body = vec![b' '; 1000];
            let writer = async {
                for ch in body.chunks(10) {
                    if wr.write_all(ch).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            };
            let answer = tokio::select! {
                a = read_response(&mut rd, Duration::from_secs(10)) => a,
                () = writer => None,
            };
            let answered = t.elapsed();
            let (_, closed) = until_closed(&mut c, Duration::from_secs(3)).await;
            (answer, answered, closed)
        })
    };
    // 5. One request, then idle on the kept-alive connection.
    let idle = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut c = TcpStream::connect(&addr).await.unwrap();
            c.write_all(format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let first = read_response(&mut c, Duration::from_secs(5)).await;
            let (_, closed) = until_closed(&mut c, Duration::from_secs(10)).await;
            (first.map(|(h, _)| h), closed)
        })
    };
    // 6. A slow body on a route that never reads it: answered at once, then closed.
    let unread = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut c = TcpStream::connect(&addr).await.unwrap();
            let head =
                format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 1000\r\n\r\n");
            c.write_all(head.as_bytes()).await.unwrap();
            c.write_all(b"0123456789").await.unwrap();
            let first = read_response(&mut c, Duration::from_secs(5)).await;
            let (_, closed) = until_closed(&mut c, Duration::from_secs(10)).await;
            (first.map(|(h, _)| h), closed)
        })
    };

    let (bytes, closed) = silent.await.unwrap();
    let closed = closed.expect("a silent connection is closed");
    assert!(
        bytes.is_empty() && closed < Duration::from_secs(1) + slack,
        "silent: {closed:?}"
    );
    assert!(
        closed >= Duration::from_millis(900),
        "silent: closed early, {closed:?}"
    );

    let (gone, bytes, closed) = slow_head.await.unwrap();
    let gone = gone.or(closed).expect("a slow head is cut off");
    assert!(
        gone < Duration::from_secs(1) + slack,
        "slow head lasted {gone:?}"
    );
    assert!(
        bytes.is_empty() || String::from_utf8_lossy(&bytes).starts_with("HTTP/1.1 408"),
        "slow head got {:?}",
        String::from_utf8_lossy(&bytes)
    );

    let (answer, answered, closed) = slow_body.await.unwrap();
    let (head, body) = answer.expect("a slow body is answered");
    assert!(head.starts_with("http/1.1 408"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"message": "request body timed out"})
    );
    assert!(
        answered < Duration::from_secs(2) + slack,
        "slow body answered after {answered:?}"
    );
    assert!(closed.is_some(), "closed after the 408");

    let (first, closed) = idle.await.unwrap();
    assert!(first.expect("first answer").starts_with("http/1.1 200"));
    let closed = closed.expect("an idle kept-alive connection is closed");
    assert!(
        closed < Duration::from_secs(1) + slack,
        "idle lasted {closed:?}"
    );

    let (first, closed) = unread.await.unwrap();
    assert!(first.expect("answered").starts_with("http/1.1 200"));
    assert!(closed.expect("closed").as_secs_f64() < 1.0 + slack.as_secs_f64());

    let crowd_closed = crowd.await.unwrap();
    assert_eq!(crowd_closed, 200, "silent connections closed");

    let (served, worst) = normal.await.unwrap();
    assert!(served >= 20, "only {served} normal requests in 4 s");
    assert!(
        worst < Duration::from_secs(2),
        "a normal request took {worst:?}"
    );
    println!(
        "slowloris: 204 slow connections cut off; {served} normal requests served alongside, slowest {worst:?}"
    );
    // Oversized heads are refused outright.
    let mut c = TcpStream::connect(&addr).await.unwrap();
    let big = format!(
        "GET /healthz HTTP/1.1\r\nhost: {addr}\r\nx-big: {}\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    let _ = c.write_all(big.as_bytes()).await;
    let (bytes, _) = until_closed(&mut c, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    assert_eq!(send(s.get("/healthz")).await.status, 200);
}

/// The limits are on by default.
#[test]
fn header_and_body_timeouts_are_on_by_default() {
    let c = palmgate::config::Config::load(None, &[]).expect("defaults");
    assert_eq!(c.http.header_timeout, Duration::from_secs(30));
    assert_eq!(c.http.body_timeout, Duration::from_secs(30));
}
