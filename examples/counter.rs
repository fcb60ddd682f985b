//! The smallest sessioner app: a per-visitor counter.
//!
//! ```sh
//! cargo run --example counter   # then: curl -c jar -b jar http://127.0.0.1:5800/counter
//! ```

mod shutdown;

use salvo::prelude::*;
use sessioner::{Options, SessionDepotExt, sessioner};

#[handler]
async fn counter(depot: &mut Depot) -> Result<String, sessioner::Error> {
    let session = depot.session()?;
    let n = session.get::<u64>("count").await?.unwrap_or(0) + 1;
    session.set("count", &n).await?;
    Ok(format!("visits: {n}\n"))
}

#[tokio::main]
async fn main() {
    let router = Router::new()
        .hoop(sessioner(Options {
            provider: "file".into(),
            provider_config: "data/sessions".into(),
            ..Default::default()
        }))
        .push(Router::with_path("counter").get(counter));
    let port = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(5800);
    let acceptor = TcpListener::new(("127.0.0.1", port)).bind().await;
    let server = Server::new(acceptor);
    if let Err(e) = shutdown::stop_on_signal(server.handle()) {
        eprintln!("counter: cannot listen for stop signals: {e}");
        std::process::exit(2);
    }
    println!("counter on http://127.0.0.1:{port}/counter");
    server.serve(router).await;
}
