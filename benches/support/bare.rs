//! The HTTP ceiling: a bare actix-web handler answering a fixed JSON body from memory, in its
//! own process (this benchmark binary started again with `--bare-server`), so that it and the
//! server under test are measured the same way, by the same client.

use std::process::{Child, Command};

const FLAG: &str = "--bare-server";
const BODY: &str = "SPG99_BARE_BODY";

/// Call first in `main`: `true` when this process is the bare server (it has served and
/// stopped by then).
pub fn child_main() -> bool {
    if !std::env::args().any(|a| a == FLAG) {
        return false;
    }
    use actix_web::{web, App, HttpResponse, HttpServer};
    let body: &'static str = Box::leak(std::env::var(BODY).unwrap_or_default().into_boxed_str());
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            App::new().route(
                "/bare",
                web::get().to(move || async move {
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .body(body)
                }),
            )
        })
        .workers(2)
        .backlog(4096)
        .bind("127.0.0.1:0")
        .unwrap();
        println!("listening on {}", server.addrs()[0]);
        server.run().await.unwrap();
    });
    true
}

/// Starts the bare server answering `body` on `GET /bare`; returns it and its address.
pub fn spawn(body: &str) -> (Child, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg(FLAG).env(BODY, body);
    super::spawn_listening(cmd)
}
