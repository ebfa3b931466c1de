//! Handing live mounts from one worker process to the next: the messages between the
//! [`supervisor`](crate::supervisor) and its worker, and the worker's end of them.
//!
//! The supervisor holds a descriptor of every mount's `/dev/fuse` connection. While it does,
//! the kernel keeps a mount alive after the worker serving it dies: requests wait in the
//! connection's queue. The next worker gets the descriptors and serves them, and nothing is
//! remounted, so containers using the volumes see a stall, not an error.
//!
//! Messages are JSON, one per SOCK_SEQPACKET datagram, with at most one descriptor attached.
//! On connect the supervisor sends the plugin socket's listener, every held connection, then
//! `Ready`; the worker then reports each mount it makes (`Hold`, with its connection) and each
//! it ends (`Release`).

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketType,
};
use serde::{Deserialize, Serialize};

/// Environment variable naming the supervisor's socket; set only for a worker.
pub const SUPERVISOR_ENV: &str = "S3VOL_SUPERVISOR_SOCKET";

/// Longest message: a volume name is at most a few hundred bytes.
const MAX_MESSAGE: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Message {
    /// Supervisor → worker: the plugin socket's listener (attached).
    Listener,
    /// Supervisor → worker: the live mount of `volume` (its connection attached).
    Held { volume: String },
    /// Supervisor → worker: that was all.
    Ready,
    /// Worker → supervisor: `volume` is mounted (its connection attached).
    Hold { volume: String },
    /// Worker → supervisor: `volume`'s mount ended; drop its connection.
    Release { volume: String },
}

fn io_error(e: rustix::io::Errno) -> std::io::Error {
    std::io::Error::from(e)
}

/// A new SOCK_SEQPACKET unix socket.
pub fn seqpacket_socket() -> std::io::Result<OwnedFd> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io_error)
}

pub fn unix_address(path: &Path) -> std::io::Result<SocketAddrUnix> {
    SocketAddrUnix::new(path).map_err(io_error)
}

/// Send `message`, with `fd` attached if given.
pub fn send(socket: impl AsFd, message: &Message, fd: Option<&OwnedFd>) -> std::io::Result<()> {
    let body = serde_json::to_vec(message).expect("messages serialize");
    let fds;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if let Some(fd) = fd {
        fds = [fd.as_fd()];
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    rustix::net::sendmsg(
        socket,
        &[IoSlice::new(&body)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(io_error)?;
    Ok(())
}

/// Receive one message and the descriptor attached to it; `None` when the peer closed.
pub fn receive(socket: impl AsFd) -> std::io::Result<Option<(Message, Option<OwnedFd>)>> {
    let mut body = vec![0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut body)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(io_error)?;
    let mut fd = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            // Keep the first; more would be a protocol error, and dropping closes them.
            for received_fd in fds {
                fd.get_or_insert(received_fd);
            }
        }
    }
    if received.bytes == 0 {
        return Ok(None);
    }
    let message = serde_json::from_slice(&body[..received.bytes]).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad message from the other process: {e}"),
        )
    })?;
    Ok(Some((message, fd)))
}

/// The worker's end: what the supervisor handed over, and the channel to tell it about
/// mounts.
#[derive(Debug)]
pub struct WorkerHandover {
    socket: Mutex<OwnedFd>,
    listener: Mutex<Option<OwnedFd>>,
    /// Live mounts of the previous worker, by volume, until taken over.
    held: Mutex<HashMap<String, OwnedFd>>,
}

impl WorkerHandover {
    /// Connect to the supervisor at `path` and receive what it holds.
    pub fn connect(path: &Path) -> Result<Self, String> {
        let fail = |e: std::io::Error| {
            format!(
                "cannot get the plugin socket and live mounts from the supervisor at {}: {e}",
                path.display()
            )
        };
        let socket = seqpacket_socket().map_err(fail)?;
        rustix::net::connect(&socket, &unix_address(path).map_err(fail)?)
            .map_err(|e| fail(io_error(e)))?;
        let mut listener = None;
        let mut held = HashMap::new();
        loop {
            match receive(&socket).map_err(fail)? {
                Some((Message::Listener, Some(fd))) => listener = Some(fd),
                Some((Message::Held { volume }, Some(fd))) => {
                    held.insert(volume, fd);
                }
                Some((Message::Ready, _)) => break,
                Some((other, _)) => {
                    return Err(fail(std::io::Error::other(format!(
                        "unexpected message {other:?}"
                    ))))
                }
                None => return Err(fail(std::io::Error::other("it closed the connection"))),
            }
        }
        if listener.is_none() {
            return Err(fail(std::io::Error::other("it sent no listener")));
        }
        Ok(Self {
            socket: Mutex::new(socket),
            listener: Mutex::new(listener),
            held: Mutex::new(held),
        })
    }

    /// The plugin socket's listener (once).
    pub fn take_listener(&self) -> Option<OwnedFd> {
        self.listener.lock().unwrap().take()
    }

    /// Whether the previous worker left a live mount of `volume`.
    pub fn holds(&self, volume: &str) -> bool {
        self.held.lock().unwrap().contains_key(volume)
    }

    /// The live mount of `volume` the previous worker left (once).
    pub fn take(&self, volume: &str) -> Option<OwnedFd> {
        self.held.lock().unwrap().remove(volume)
    }

    /// The volumes whose live mounts are not taken over (yet).
    pub fn held_volumes(&self) -> Vec<String> {
        self.held.lock().unwrap().keys().cloned().collect()
    }

    /// Tell the supervisor to hold `connection`, the mount of `volume`.
    pub fn hold(&self, volume: &str, connection: &OwnedFd) {
        let message = Message::Hold {
            volume: volume.to_string(),
        };
        if let Err(e) = send(&*self.socket.lock().unwrap(), &message, Some(connection)) {
            tracing::warn!(volume, error = %e, "cannot hand the mount to the supervisor; it would not survive a crash of this process");
        }
    }

    /// Tell the supervisor that `volume`'s mount ended.
    pub fn release(&self, volume: &str) {
        self.held.lock().unwrap().remove(volume);
        let message = Message::Release {
            volume: volume.to_string(),
        };
        if let Err(e) = send(&*self.socket.lock().unwrap(), &message, None) {
            tracing::warn!(volume, error = %e, "cannot tell the supervisor that a mount ended");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_descriptors_cross_a_socket_pair() {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &file, b"through the socket").unwrap();
        let fd = OwnedFd::from(file);
        let hold = Message::Hold {
            volume: "v1".into(),
        };
        send(&a, &hold, Some(&fd)).unwrap();
        send(&a, &Message::Ready, None).unwrap();
        let (message, received) = receive(&b).unwrap().unwrap();
        assert_eq!(message, hold);
        // The same open file: reading from the start of it gives what was written.
        let mut text = String::new();
        let mut file = std::fs::File::from(received.expect("a descriptor"));
        std::io::Seek::rewind(&mut file).unwrap();
        std::io::Read::read_to_string(&mut file, &mut text).unwrap();
        assert_eq!(text, "through the socket");
        let (message, fd) = receive(&b).unwrap().unwrap();
        assert_eq!(message, Message::Ready);
        assert!(fd.is_none());
        drop(a);
        assert!(receive(&b).unwrap().is_none(), "closed");
    }
}
