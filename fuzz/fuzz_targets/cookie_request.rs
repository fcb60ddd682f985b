//! Whole requests with an arbitrary Cookie header: never a panic, never a 5xx.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use salvo::http::header::HeaderValue;
use salvo::prelude::*;
use salvo::test::TestClient;
use sessioner::{Options, SessionDepotExt};

#[handler]
async fn touch(depot: &mut Depot) -> Result<&'static str, sessioner::Error> {
    let s = depot.session()?;
    let n = s.get::<u64>("n").await?.unwrap_or(0);
    s.set("n", &(n + 1)).await?;
    Ok("ok")
}

fn service() -> &'static Service {
    static SERVICE: OnceLock<Service> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let handler = Options { provider: "memory".into(), ..Default::default() }.build().expect("options");
        Service::new(Router::new().hoop(handler).get(touch))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let res = rt.block_on(TestClient::get("http://127.0.0.1/").add_header("cookie", value, true).send(service()));
    assert!(!res.status_code.is_some_and(|s| s.is_server_error()));
});
