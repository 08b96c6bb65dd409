//! A TCP forwarder a test can cut and heal: a network partition between one process and a server (a
//! broker node and NATS) on loopback, without namespaces. Two kinds: [`TcpCut::cut`] shuts live
//! connections down and closes new ones as soon as they are accepted, as a link that refuses would;
//! [`TcpCut::silence`] keeps every connection up and holds what crosses it until [`TcpCut::heal`], as a
//! link that loses every packet would: nobody is told, only timeouts notice, and what TCP was still
//! resending arrives once the link is back.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct TcpCut {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    silent: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl TcpCut {
    /// Forwards a new loopback port to `target`.
    pub fn to(target: SocketAddr) -> Self {
        Self::from(TcpListener::bind("127.0.0.1:0").unwrap(), target)
    }

    /// Forwards what `listener` accepts to `target` (a listener in a NAT lab host: `Lab::listen_in`).
    pub fn from(listener: TcpListener, target: SocketAddr) -> Self {
        let addr = listener.local_addr().unwrap();
        let (cut, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let silent = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let accept = {
            let (cut, stop, live, silent) = (cut.clone(), stop.clone(), live.clone(), silent.clone());
            // Polled, so that dropping it never has to connect to its address to wake it: from this
            // process's namespace a NAT lab host's address is not reachable (and must not be tried).
            listener.set_nonblocking(true).unwrap();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let client = match listener.accept() {
                        Ok((client, _)) => client,
                        // Nothing waiting (or a failed accept): look again shortly.
                        Err(_) => {
                            std::thread::sleep(std::time::Duration::from_millis(10));
                            continue;
                        }
                    };
                    let _ = client.set_nonblocking(false);
                    if cut.load(Ordering::Relaxed) {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(target) else { continue };
                    let pairs = [(client.try_clone(), server.try_clone()), (server.try_clone(), client.try_clone())];
                    live.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend([client, server]);
                    for pair in pairs {
                        if let (Ok(from), Ok(to)) = pair {
                            let silent = silent.clone();
                            std::thread::spawn(move || forward(from, to, &silent));
                        }
                    }
                }
            })
        };
        Self { addr, cut, silent, stop, live, accept: Some(accept) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Breaks every connection through it, and refuses new ones until [`TcpCut::heal`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        for s in self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Holds everything that crosses it from now on, keeping every connection up, until [`TcpCut::heal`].
    pub fn silence(&self) {
        self.silent.store(true, Ordering::Relaxed);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::Relaxed);
        self.silent.store(false, Ordering::Relaxed);
    }
}

/// Copies one direction until either side ends, holding the bytes while `silent` (once the buffer is
/// held, nothing more is read, so the sender's own buffers fill as they would behind a dead link).
fn forward(mut from: TcpStream, mut to: TcpStream, silent: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match std::io::Read::read(&mut from, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while silent.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.flush();
    let _ = to.shutdown(Shutdown::Both);
}

impl Drop for TcpCut {
    fn drop(&mut self) {
        self.cut();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}
