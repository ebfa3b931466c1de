//! A TCP proxy between s3vol and the S3 server that makes the backend go away, stall or crawl,
//! for the fault tests. It runs on a thread and runtime of its own, so a test thread blocked in
//! a filesystem call cannot hold it up, and it listens on 127.0.0.1 only.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Pass everything through.
    None,
    /// The backend is gone: open connections are closed and new ones are closed at once.
    Down,
    /// The backend hangs: connections are accepted, nothing flows either way.
    Stall,
    /// The backend crawls: every connection passes this many bytes per second each way.
    Slow(u32),
}

/// The running proxy; stopped when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Proxy to the server at `upstream` (`http://host:port`, as in `S3_TEST_ENDPOINT`).
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("the upstream endpoint is http://IP:PORT");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (fault, faults) = watch::channel(Fault::None);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).unwrap();
                    tokio::select! {
                        _ = accept_loop(listener, upstream, faults) => {}
                        _ = stopped => {}
                    }
                });
            })
            .unwrap();
        FaultProxy {
            addr,
            fault,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The endpoint URL to give s3vol instead of the server's.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Change what happens to the traffic, for open connections too.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, faults: watch::Receiver<Fault>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if *faults.borrow() == Fault::Down {
            drop(client);
            continue;
        }
        let faults = faults.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            // When either direction ends, both sockets close (the halves drop together).
            tokio::select! {
                _ = pump(client_read, server_write, faults.clone()) => {}
                _ = pump(server_read, client_write, faults) => {}
            }
        });
    }
}

/// Copy one direction of a connection, obeying the fault as it changes.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut faults: watch::Receiver<Fault>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let fault = *faults.borrow_and_update();
        match fault {
            Fault::Down => return,
            Fault::Stall => {
                if faults.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Fault::None | Fault::Slow(_) => {}
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Look at the new fault before moving more bytes.
            _ = faults.changed() => continue,
        };
        let sent = match fault {
            Fault::Slow(bytes_per_second) => {
                let piece = (bytes_per_second as usize / 10).max(1);
                let mut ok = true;
                for part in buf[..n].chunks(piece) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if to.write_all(part).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                ok
            }
            _ => to.write_all(&buf[..n]).await.is_ok(),
        };
        if !sent {
            return;
        }
    }
}
