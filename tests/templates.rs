//! A serde-driven template engine (minijinja) reads the flash with macaron's names,
//! `Flash.SuccessMsg` and the other three, as a macaron template does; askama templates
//! read `flash.success_msg` instead (see `templates/flash.html`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::Browser;
use minijinja::value::Serde;
use minijinja::{Environment, UndefinedBehavior, context};
use salvo::prelude::*;
use sessioner::{Options, SessionDepotExt, sessioner};

/// A macaron template's flash block, names unchanged.
const FLASH_HTML: &str = "\
{% if Flash.SuccessMsg %}<p class=\"success\">{{ Flash.SuccessMsg }}</p>{% endif %}
{% if Flash.ErrorMsg %}<p class=\"error\">{{ Flash.ErrorMsg }}</p>{% endif %}
{% if Flash.InfoMsg %}<p class=\"info\">{{ Flash.InfoMsg }}</p>{% endif %}
{% if Flash.WarningMsg %}<p class=\"warning\">{{ Flash.WarningMsg }}</p>{% endif %}";

/// Sets one message per level for the next request, then redirects to it.
#[handler]
async fn save(depot: &mut Depot, res: &mut Response) -> Result<(), sessioner::Error> {
    let flash = depot.flash_mut()?;
    flash.success("Saved <script>alert(1)</script>");
    flash.error("Disk & quota");
    flash.info("Note");
    flash.warning("Careful");
    res.render(Redirect::other("/show"));
    Ok(())
}

/// Renders the flash this request shows with minijinja; a name the template gets wrong is
/// an error (strict undefined), not an empty string.
#[handler]
async fn show(depot: &mut Depot, res: &mut Response) -> Result<(), sessioner::Error> {
    let flash = depot.flash_mut()?.current().await?;
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // The `.html` name turns on HTML escaping.
    env.add_template("flash.html", FLASH_HTML).unwrap();
    let body = env
        .get_template("flash.html")
        .unwrap()
        .render(context! { Flash => Serde(&flash) })
        .unwrap();
    res.render(Text::Html(body));
    Ok(())
}

#[tokio::test]
async fn minijinja_reads_macarons_flash_names_and_escapes_them() {
    let sessions = sessioner(common::isolated(Options {
        provider: "memory".into(),
        ..Default::default()
    }));
    let router = Router::new()
        .hoop(sessions)
        .push(Router::with_path("save").get(save))
        .push(Router::with_path("show").get(show));
    let mut browser = Browser::new(Arc::new(Service::new(router)));

    let saved = browser.get("/save").await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER);
    assert_eq!(saved.headers["location"], "/show");
    let shown = browser.get("/show").await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(
        shown.body,
        "<p class=\"success\">Saved &lt;script&gt;alert(1)&lt;&#x2f;script&gt;</p>\n\
         <p class=\"error\">Disk &amp; quota</p>\n\
         <p class=\"info\">Note</p>\n\
         <p class=\"warning\">Careful</p>"
    );

    // Shown once: the next request renders the same template with every level empty.
    let again = browser.get("/show").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, "\n\n\n");
}
