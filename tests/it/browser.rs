//! The chat page (web/index.html over clients/js/heartwire.js, served at `/`) in a real
//! browser: Debian's headless Chromium driven by its chromedriver over WebDriver
//! (fantoccini). Nothing is downloaded: `.ci/run` installs the packages `chromium` and
//! `chromium-driver`, and sets `HEARTWIRE_REQUIRE_BROWSER=1` so that a missing browser fails
//! the run; elsewhere these tests skip with a message when it is missing.
//!
//! The pages are used as a person would: typing into fields and clicking buttons; what they
//! show is read back from the DOM. `HEARTWIRE_SCREENSHOT=page.png` keeps the screenshot of
//! `the_page_renders` for a look.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use heartwire::ws::WsService;
use heartwire::Config;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::common::ws::{start_ws, WsServer};

/// Longest wait for a page to show something; generous for a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(30);
/// The browser window; a screenshot has exactly this size.
const WINDOW: (u32, u32) = (1000, 700);

/// Chromium and chromedriver, or `None` (with a message) when they are missing and the
/// environment does not require them.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let path = |var: &str, default: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default))
    };
    let chromium = path("HEARTWIRE_CHROMIUM", "/usr/bin/chromium");
    let driver = path("HEARTWIRE_CHROMEDRIVER", "/usr/bin/chromedriver");
    if chromium.exists() && driver.exists() {
        return Some((chromium, driver));
    }
    let missing = format!(
        "{} or {} is missing (Debian: apt-get install chromium chromium-driver)",
        chromium.display(),
        driver.display()
    );
    if std::env::var_os("HEARTWIRE_REQUIRE_BROWSER").is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("HEARTWIRE_REQUIRE_BROWSER is set but {missing}");
    }
    eprintln!(
        "skipping the browser test: {missing}; set HEARTWIRE_REQUIRE_BROWSER=1 to fail instead"
    );
    None
}

/// A chromedriver on a free port. It runs in a process group of its own, which the browsers
/// it starts join, so that dropping it (also when a test panics) kills them all.
struct Driver {
    child: Child,
    url: String,
    chromium: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            // SAFETY: kill(2) with a negative pid signals that process group; no memory is
            // involved.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }
}

impl Driver {
    async fn start(chromium: PathBuf, driver: &Path) -> Driver {
        let mut child = Command::new(driver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let until = Instant::now() + PATIENCE;
        loop {
            let line = tokio::time::timeout_at(until.into(), lines.next_line())
                .await
                .expect("chromedriver reports its port in time")
                .expect("chromedriver output")
                .expect("chromedriver keeps running");
            // The first line says "port 0"; the port is on "started successfully on port N."
            if let Some(port) = line
                .contains("started successfully")
                .then(|| line.rsplit("on port ").next())
                .flatten()
            {
                let url = format!("http://127.0.0.1:{}", port.trim_end_matches('.'));
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                return Driver {
                    child,
                    url,
                    chromium,
                };
            }
        }
    }

    /// A new browser (its own profile, so pages share nothing) on `url`.
    async fn open(&self, url: &str) -> Page {
        let profile = tempfile::tempdir().expect("profile directory");
        let mut caps = Capabilities::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": self.chromium,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--hide-scrollbars",
                         format!("--window-size={},{}", WINDOW.0, WINDOW.1),
                         format!("--user-data-dir={}", profile.path().display())],
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a browser session");
        client.goto(url).await.expect("page loads");
        Page {
            client,
            _profile: profile,
        }
    }
}

/// One browser with the page open.
struct Page {
    client: Client,
    _profile: tempfile::TempDir,
}

impl Page {
    /// Evaluates `script` (a function body; `return` gives the value).
    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script {script:?} failed: {e}"))
    }

    /// Waits until `script` returns `true`.
    async fn until(&self, what: &str, script: &str) {
        let until = Instant::now() + PATIENCE;
        while self.js(script).await != Value::Bool(true) {
            if Instant::now() > until {
                panic!(
                    "page never showed {what}; state {}, messages {}",
                    self.js("return document.getElementById('state').textContent").await,
                    self.js("return [...document.querySelectorAll('#messages li')].map(li => li.textContent)").await,
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn type_into(&self, id: &str, text: &str) {
        let field = self
            .client
            .find(Locator::Id(id))
            .await
            .expect("field exists");
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("typing");
    }

    async fn click(&self, id: &str) {
        self.client
            .find(Locator::Id(id))
            .await
            .expect("button exists")
            .click()
            .await
            .expect("click");
    }

    /// Fills in the join form and waits until the page is connected and in the room.
    async fn join(&self, user: &str, room: &str) {
        self.type_into("user", user).await;
        self.type_into("room", room).await;
        self.click("join-button").await;
        self.until_connected().await;
    }

    async fn until_connected(&self) {
        self.until(
            "the connected state",
            "return document.getElementById('state').dataset.state === 'connected'",
        )
        .await;
    }

    /// Types a message and presses Send.
    async fn say(&self, text: &str) {
        self.type_into("text", text).await;
        self.click("send-button").await;
    }

    /// The texts of the messages shown, in order.
    async fn messages(&self) -> Vec<String> {
        let texts = self
            .js("return [...document.querySelectorAll('#messages li.message')].map(li => li.dataset.text)")
            .await;
        serde_json::from_value(texts).expect("a list of strings")
    }

    async fn until_messages(&self, want: &[&str]) {
        let list = serde_json::to_string(want).expect("json");
        self.until(
            &format!("the messages {list}"),
            &format!(
                "const shown = [...document.querySelectorAll('#messages li.message')].map(li => li.dataset.text);
                 return {list}.every(t => shown.includes(t));"
            ),
        )
        .await;
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        heartbeat_interval: Duration::from_secs(2),
        workers: 2,
        shutdown_reconnect: Duration::from_millis(100),
        drain_timeout: Duration::from_secs(3),
        close_timeout: Duration::from_secs(1),
        presence_events: vec!["*".into()],
        ..Config::default()
    }
}

/// Starts a server whose WebSocket listener is on `addr` (a restart on the same port: a new
/// in-memory history, so new epochs).
async fn start_on(config: &Config, addr: SocketAddr) -> WsServer {
    let mut config = config.clone();
    config.ws.listen = Some(addr);
    let until = Instant::now() + PATIENCE;
    loop {
        let server = crate::common::start(config.clone());
        match WsService::start(&server, &config) {
            Ok(Some(ws)) => return WsServer { server, ws },
            Ok(None) => unreachable!("ws.listen is set"),
            Err(e) if Instant::now() < until => {
                eprintln!("restart on {addr} not yet possible: {e}");
                server.shutdown().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot restart on {addr}: {e}"),
        }
    }
}

#[actix_rt::test]
async fn two_pages_chat_and_keep_every_message_through_a_server_restart() {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let config = config();
    let server = start_ws(config.clone());
    let url = format!("http://{}/", server.ws_addr());
    let driver = Driver::start(chromium, &driver).await;
    let (alice, bob) = tokio::join!(driver.open(&url), driver.open(&url));
    alice.join("alice", "lobby").await;
    bob.join("bob", "lobby").await;
    // presence: the room list, then a join event
    alice
        .until(
            "bob in the room",
            "return !!document.querySelector('#presence li[data-user=bob]')",
        )
        .await;
    bob.until(
        "alice in the room",
        "return !!document.querySelector('#presence li[data-user=alice]')",
    )
    .await;

    alice.say("hello from alice").await;
    bob.until_messages(&["hello from alice"]).await;
    bob.say("hello from bob").await;
    alice.until_messages(&["hello from bob"]).await;

    // The server goes away; both keep typing, and the page says what waits.
    let server = {
        let addr = server.ws_addr();
        assert!(server.server.shutdown().await, "server drained");
        server.ws.stop().await;
        alice.say("while down, alice").await;
        bob.say("while down, bob").await;
        alice
            .until(
                "the message waiting",
                "return document.getElementById('pending').textContent.includes('1 message waiting')",
            )
            .await;
        start_on(&config, addr).await
    };
    for page in [&alice, &bob] {
        page.until_connected().await;
        page.until_messages(&["while down, alice", "while down, bob"])
            .await;
    }
    alice.say("after the restart").await;
    let all = [
        "hello from alice",
        "hello from bob",
        "while down, alice",
        "while down, bob",
        "after the restart",
    ];
    for page in [&alice, &bob] {
        page.until_messages(&all).await;
        let mut shown = page.messages().await;
        // Before the restart in order; what was queued offline comes in either order.
        assert_eq!(shown[..2], all[..2], "{shown:?}");
        assert_eq!(shown.last().map(String::as_str), Some(all[4]), "{shown:?}");
        shown.sort();
        let mut want: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(shown, want, "every message once: none lost, none doubled");
        // The restart's new history is announced, not hidden.
        assert_eq!(
            page.js("return document.querySelectorAll('#messages li.notice.gap').length")
                .await,
            json!(1)
        );
        assert_eq!(
            page.js("return document.getElementById('pending').textContent")
                .await,
            json!("")
        );
    }
    let rtt = alice
        .js("return document.getElementById('rtt').textContent")
        .await;
    assert!(
        rtt.as_str()
            .is_some_and(|t| t.starts_with("RTT ") && t.ends_with(" ms")),
        "{rtt}"
    );
    alice.close().await;
    bob.close().await;
    assert!(server.server.shutdown().await);
    server.ws.stop().await;
}

/// PNG signature, then the IHDR chunk: width and height, big-endian.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && &png[12..16] == b"IHDR",
        "not a PNG"
    );
    let be = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    (be(16), be(20))
}

#[actix_rt::test]
async fn the_page_renders() {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let server = start_ws(config());
    let driver = Driver::start(chromium, &driver).await;
    let page = driver.open("about:blank").await;
    let blank = page.client.screenshot().await.expect("screenshot");
    page.client
        .goto(&format!("http://{}/", server.ws_addr()))
        .await
        .expect("page loads");
    page.join("carol", "lobby").await;
    page.say("a message to show").await;
    page.until_messages(&["a message to show"]).await;
    let png = page.client.screenshot().await.expect("screenshot");
    if let Some(path) = std::env::var_os("HEARTWIRE_SCREENSHOT") {
        std::fs::write(&path, &png).expect("screenshot written");
    }

    let (width, height) = png_size(&png);
    let viewport = page
        .js("return [window.innerWidth * devicePixelRatio, window.innerHeight * devicePixelRatio]")
        .await;
    assert_eq!(
        json!([width, height]),
        viewport,
        "the screenshot is the viewport"
    );
    assert_eq!(png_size(&blank), (width, height));
    // A blank page of that size compresses to a few KiB; text, colours and layout do not.
    assert!(
        png.len() > 4 * blank.len() && png.len() > 10_000,
        "the page looks empty: {} bytes, about:blank {} bytes",
        png.len(),
        blank.len()
    );
    // The stylesheet applied and the parts are where a person sees them.
    let header = page
        .client
        .find(Locator::Css("header"))
        .await
        .expect("header");
    assert_eq!(
        header.css_value("background-color").await.expect("css"),
        "rgba(17, 24, 39, 1)"
    );
    for id in ["state", "presence", "messages", "text", "send-button"] {
        let element = page.client.find(Locator::Id(id)).await.expect(id);
        assert!(
            element.is_displayed().await.expect("displayed"),
            "#{id} is not visible"
        );
        let (_, _, w, h) = element.rectangle().await.expect("rectangle");
        assert!(w > 10.0 && h > 10.0, "#{id} is {w}x{h}");
    }
    let state = page.client.find(Locator::Id("state")).await.expect("state");
    assert_eq!(state.text().await.expect("text"), "connected");
    let message = page
        .client
        .find(Locator::Css("#messages li.message"))
        .await
        .expect("message");
    let shot = message.screenshot().await.expect("element screenshot");
    let (w, h) = png_size(&shot);
    assert!(w > 100 && h > 10, "the message is drawn {w}x{h}");
    page.close().await;
    assert!(server.server.shutdown().await);
    server.ws.stop().await;
}
