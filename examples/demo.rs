//! The sessioner demo: a visit counter, a login with flash messages, and logout.
//!
//! ```sh
//! cargo run --example demo    # then open http://127.0.0.1:5800
//! ```
//!
//! It listens on 127.0.0.1:`$PORT` (default 5800) and keeps sessions in an embedded,
//! persistent store under `data/demo-sessions` (sled when the `sled` feature is on, the
//! default; otherwise files), so a restart keeps you logged in. Any option can also come from
//! the environment, e.g. `SESSION_PROVIDER=memory cargo run --example demo`. Ctrl-C (SIGINT)
//! or SIGTERM stops it gracefully (`shutdown/mod.rs`), so the last saves reach the disk.
#![allow(dead_code)]

mod shutdown;

use askama::Template;
use salvo::prelude::*;
use sessioner::{Flash, Options, SessionDepotExt};

/// The only account: `demo` / `demo`.
const USERS: &[(&str, &str)] = &[("demo", "demo")];
const STYLE: &str = include_str!("static/style.css");

#[derive(Template)]
#[template(path = "home.html")]
struct Home {
    user: String,
    visits: u64,
    flash: Flash,
}

#[derive(Template)]
#[template(path = "login.html")]
struct Login {
    user: String,
    flash: Flash,
}

/// Either a session failure or a template failure; both answer with an empty error status.
#[derive(Debug)]
enum AppError {
    Session(sessioner::Error),
    Template(askama::Error),
}

impl From<sessioner::Error> for AppError {
    fn from(e: sessioner::Error) -> Self {
        AppError::Session(e)
    }
}

impl From<askama::Error> for AppError {
    fn from(e: askama::Error) -> Self {
        AppError::Template(e)
    }
}

#[async_trait]
impl Writer for AppError {
    async fn write(self, req: &mut Request, depot: &mut Depot, res: &mut Response) {
        match self {
            AppError::Session(e) => e.write(req, depot, res).await,
            AppError::Template(e) => {
                tracing::error!(error = %e, "template failed");
                res.status_code(StatusCode::INTERNAL_SERVER_ERROR);
            }
        }
    }
}

type Page = Result<Text<String>, AppError>;

async fn user(depot: &Depot) -> Result<String, sessioner::Error> {
    Ok(depot
        .session()?
        .get::<String>("user")
        .await?
        .unwrap_or_default())
}

/// Renders the home page; counts the visit.
async fn render_home(depot: &mut Depot) -> Page {
    let session = depot.session()?;
    let visits = session.get::<u64>("visits").await?.unwrap_or(0) + 1;
    session.set("visits", &visits).await?;
    let user = user(depot).await?;
    let flash = depot.flash_mut()?.current().await?;
    Ok(Text::Html(
        Home {
            user,
            visits,
            flash,
        }
        .render()?,
    ))
}

#[handler]
async fn home(depot: &mut Depot) -> Page {
    render_home(depot).await
}

/// A page that shows a message in this very response (`info_now`), without storing it.
#[handler]
async fn now(depot: &mut Depot) -> Page {
    depot
        .flash_mut()?
        .info_now("This message was set with info_now: it shows in this response only.");
    render_home(depot).await
}

#[handler]
async fn login_form(depot: &mut Depot) -> Page {
    let user = user(depot).await?;
    let flash = depot.flash_mut()?.current().await?;
    Ok(Text::Html(Login { user, flash }.render()?))
}

#[handler]
async fn login(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let username = req.form::<String>("username").await.unwrap_or_default();
    let password = req.form::<String>("password").await.unwrap_or_default();
    if !USERS.iter().any(|(u, p)| *u == username && *p == password) {
        depot.flash_mut()?.error("Wrong user name or password.");
        res.render(Redirect::other("/login"));
        return Ok(());
    }
    let session = depot.session()?;
    session.regenerate_id().await?; // a new id on every privilege change
    session.set("user", &username).await?;
    depot
        .flash_mut()?
        .success(format!("Welcome back, {username}!"));
    res.render(Redirect::other("/"));
    Ok(())
}

/// Logs out a logged-in visitor. Anyone else (such as a form posted from another site, which
/// `SameSite=Lax` sends without the session cookie) changes nothing and gets no cookie, which
/// would replace the visitor's.
#[handler]
async fn logout(depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    if !user(depot).await?.is_empty() {
        depot.session()?.destroy().await?;
        depot.flash_mut()?.info("You have been logged out.");
    }
    res.render(Redirect::other("/"));
    Ok(())
}

/// Pages drawn from the session are the visitor's own: no cache keeps them, so Back after a
/// logout asks the server again rather than showing the private page.
#[handler]
async fn no_store(res: &mut Response) {
    res.add_header("cache-control", "no-store", true).ok();
}

#[handler]
async fn style(res: &mut Response) {
    res.add_header("content-type", "text/css; charset=utf-8", true)
        .ok();
    res.render(STYLE);
}

/// The demo's routes behind the session middleware built from `options`.
pub fn app(options: Options) -> Result<Router, sessioner::Error> {
    Ok(Router::new()
        .push(Router::with_path("static/style.css").get(style))
        .push(
            Router::new()
                .hoop(options.build()?)
                .hoop(no_store)
                .get(home)
                .push(Router::with_path("now").get(now))
                .push(Router::with_path("login").get(login_form).post(login))
                .push(Router::with_path("logout").post(logout)),
        ))
}

/// The demo's options: an embedded persistent store unless `SESSION_PROVIDER` says otherwise.
pub fn options() -> Options {
    let mut options = Options::default();
    if std::env::var_os("SESSION_PROVIDER").is_none() {
        options.provider = if cfg!(feature = "sled") {
            "sled"
        } else {
            "file"
        }
        .into();
        options.provider_config = "data/demo-sessions".into();
    }
    options
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let router = match app(options()) {
        Ok(router) => router,
        Err(e) => {
            eprintln!("demo: {e}");
            std::process::exit(2);
        }
    };
    let port = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(5800);
    let acceptor = TcpListener::new(("127.0.0.1", port)).bind().await;
    let server = Server::new(acceptor);
    if let Err(e) = shutdown::stop_on_signal(server.handle()) {
        eprintln!("demo: cannot listen for stop signals: {e}");
        std::process::exit(2);
    }
    println!("sessioner demo on http://127.0.0.1:{port}  (log in as demo / demo)");
    // Returns after a graceful stop. The router, with the session store in it, is dropped
    // before `main` returns (at the latest with the runtime), which flushes sled.
    server.serve(router).await;
}
