//! A loopback HTTP server for the red-team tests of where credentials go: it answers every
//! request with one canned reply and hands each request's head (request line and headers)
//! to the test, which then asserts what was, or was not, sent to it.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// Serve `reply` to at most `max` connections for at most `within`; the port and the heads
/// of the requests received, in order.
pub fn serve(reply: String, max: usize, within: Duration) -> (u16, Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + within;
        let mut n = 0;
        while n < max && Instant::now() < deadline {
            match l.accept() {
                Ok((mut s, _)) => {
                    n += 1;
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut buf = vec![0u8; 16 << 10];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(k) => got.extend_from_slice(&buf[..k]),
                        }
                    }
                    let _ = tx.send(String::from_utf8_lossy(&got).into_owned());
                    let _ = s.write_all(reply.as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    (port, rx)
}
