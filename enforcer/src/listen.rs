//! Accepting on a TCP listener anyone may reach (`[metrics] listen`, `enforcerd webhook`):
//! at most `max` connections at once, the slot taken before accepting, so past the cap clients
//! wait in the kernel's listen queue at no cost to the process; an accept error (EMFILE and the
//! like) backs off instead of spinning.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

/// Serves every connection `listener` accepts with `serve`, each in a task of its own, at most
/// `max` at once; `what` names the listener in logs. Returns only if the slots are closed.
pub async fn serve_bounded<F, Fut>(listener: TcpListener, max: usize, what: &'static str, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let connection = serve(stream, peer);
        tokio::spawn(async move {
            let _slot = slot;
            connection.await;
        });
    }
}
