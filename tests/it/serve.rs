//! The daemon's HTTP server layer (`cosell_sync::serve`) against raw sockets on the loopback,
//! with short limits (the daemon's own figures are measured by `benches/flood.rs`): slow heads
//! and bodies are cut off, connections over the cap are closed at once, an answered keep-alive
//! connection going quiet is not a refusal, each refusal is counted by listener and reason,
//! two routers share one address, and an address in use is a bind error naming its key.

use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::Router;
use cosell_sync::serve::{self, Limits, Listeners};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

fn limits(max_connections: usize) -> Limits {
    Limits {
        header_timeout: Duration::from_millis(400),
        body_timeout: Duration::from_millis(400),
        idle_timeout: Duration::from_millis(1500),
        max_connections,
    }
}

fn app() -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok\n" }))
        .route("/echo", post(|body: String| async move { body }))
        .route(
            "/stall",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late\n"
            }),
        )
}

/// `cosell_http_rejected_total{listener,reason}` from the process's metrics.
fn rejected(listener: &str, reason: &str) -> u64 {
    let text = cosell_sync::metrics::global().render();
    let wanted =
        format!("cosell_http_rejected_total{{listener=\"{listener}\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Reads until the server closes; how long that took (None: still open after `within`).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<(Duration, String)> {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = within.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some((started.elapsed(), String::from_utf8_lossy(&got).into()))
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn start(key: &str, limits: Limits) -> (std::net::SocketAddr, CancellationToken) {
    let stop = CancellationToken::new();
    let addr = serve::serve(key, "127.0.0.1:0", app(), limits, stop.clone())
        .await
        .unwrap();
    (addr, stop)
}

#[tokio::test]
async fn a_head_sent_a_byte_at_a_time_is_cut_off_at_the_header_timeout_and_counted() {
    let (addr, _stop) = start("slowhead.listen", limits(64)).await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let head = b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let writer = tokio::spawn(async move {
        for byte in head {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        slow
    });
    let mut slow = writer.await.unwrap();
    let (_, answer) = closed_within(&mut slow, Duration::from_secs(5))
        .await
        .expect("the slow head is cut off");
    assert!(!answer.contains("200 OK"), "{answer}");
    assert_eq!(rejected("slowhead", "header_timeout"), 1);
    // A connection that never sends a byte is cut off too.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let (took, _) = closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("the silent connection is cut off");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(rejected("slowhead", "header_timeout"), 2);
}

#[tokio::test]
async fn a_body_sent_a_byte_at_a_time_gets_408_at_the_body_timeout_and_is_counted() {
    let (addr, _stop) = start("slowbody.listen", limits(64)).await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..4 {
        slow.write_all(b"a").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, answer) = closed_within(&mut slow, Duration::from_secs(5))
        .await
        .expect("the slow body is cut off");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(rejected("slowbody", "body_timeout"), 1);
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once_and_the_rest_keep_working() {
    let (addr, _stop) = start("capped.listen", limits(3)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // One byte each: the connections are accepted and held (not yet timed out).
        s.write_all(b"G").await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut over = TcpStream::connect(addr).await.unwrap();
    let (took, _) = closed_within(&mut over, Duration::from_secs(2))
        .await
        .expect("the connection over the cap is closed");
    assert!(took < Duration::from_millis(300), "{took:?}");
    assert_eq!(rejected("capped", "connection_cap"), 1);
    drop(held);
    // The held slots are given back as those connections end: a request then succeeds.
    let url = format!("http://{addr}/ok");
    let mut answered = false;
    for _ in 0..50 {
        if let Ok(r) = cosell_sync::http::client_builder()
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await
        {
            answered = r.status() == 200;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered);
}

#[tokio::test]
async fn a_connection_that_moves_no_byte_for_the_idle_timeout_is_closed() {
    let (addr, _stop) = start("idle.listen", limits(64)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (took, _) = closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("the stalled connection is closed");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(rejected("idle", "idle_timeout"), 1);
}

#[tokio::test]
async fn an_answered_keep_alive_connection_going_quiet_is_closed_but_not_a_refusal() {
    let (addr, _stop) = start("keepalive.listen", limits(64)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (_, answer) = closed_within(&mut s, Duration::from_secs(5))
        .await
        .expect("closed after the header timeout");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(rejected("keepalive", "header_timeout"), 0);
}

#[tokio::test]
async fn two_routers_share_one_address_and_a_taken_address_is_a_bind_error_naming_its_key() {
    let stop = CancellationToken::new();
    let mut listeners = Listeners::new(limits(64));
    let webhook = Router::new().route("/events", post(|| async { "event\n" }));
    let actions = Router::new().route("/actions/x", get(|| async { "action\n" }));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    listeners
        .mount("webhook.listen", &listen, webhook)
        .mount("actions.listen", &listen, actions);
    let bound = listeners.bind().await.unwrap();
    assert_eq!(bound.addr("webhook.listen"), bound.addr("actions.listen"));
    bound.serve(stop.clone());
    let client = cosell_sync::http::client_builder().build().unwrap();
    let event = client
        .post(format!("http://{listen}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(event.text().await.unwrap(), "event\n");
    let action = client
        .get(format!("http://{listen}/actions/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(action.text().await.unwrap(), "action\n");
    // The same address again, from another set of listeners: in use.
    let err = serve::serve("metrics.listen", &listen, app(), limits(4), stop.clone())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("metrics.listen {listen}: cannot listen")),
        "{text}"
    );
    assert!(text.contains("another process"), "{text}");
}
