//! The session port's relay: a backend of the client's own for the whole session, bytes both
//! ways untouched.

use crate::backend;
use crate::cancel::Target;
use crate::pgwire::Message;
use crate::session::{End, Gateway, Login, Stream};

pub(crate) async fn serve<S: Stream>(gw: &Gateway, client: &mut S, who: Login) -> Result<(), End> {
    let mut ticket = None;
    let (mut backend, ready, backend_addr) =
        backend::login(gw, &who, &who.forwarded, &mut ticket).await?;
    let ticket = ticket.expect("a login holds a ticket");
    let registration = gw.cancels.register(Some(Target {
        backend_addr,
        pid: ready.pid,
        secret: ready.secret,
    }));
    // What the backend said after authenticating (its parameters), the Gateway's cancel key,
    // then the backend's ReadyForQuery: the last word before the relay.
    let mut out = ready.said;
    out.backend_key(registration.pid, registration.secret)
        .raw(&Message {
            tag: b'Z',
            body: ready.status.to_vec(),
        })
        .send(client)
        .await?;

    let mut closed = ticket.closed.clone();
    tokio::select! {
        copied = tokio::io::copy_bidirectional(client, &mut backend) => {
            if let Ok((up, down)) = copied {
                crate::metrics::relayed(up, down);
            }
        }
        _ = closed.wait_for(|c| *c) => {}
    }
    drop(registration);
    drop(ticket);
    Err(End::Quiet)
}
