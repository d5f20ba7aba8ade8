//! The HTTP API's defences (issue 16), over real sockets with hand-written HTTP/1.1 requests,
//! so that every header (`Host`, `Content-Type`, `Origin`) is exactly what a test says:
//! non-JSON bodies refused before any effect, `Host` checked against DNS rebinding, CORS only
//! for listed origins, TLS with a test CA, several keys at once, and keys kept out of logs and
//! `--help` (the `heartwire` binary as a child process).

use std::net::SocketAddr;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{config, start, subscriber, Client, PATIENCE};
use heartwire::http::HttpService;
use heartwire::{Config, ServerHandle};

fn http_config() -> Config {
    let mut c = config();
    c.http.listen = Some("127.0.0.1:0".parse().unwrap());
    c
}

fn start_http(config: Config) -> (ServerHandle, SocketAddr) {
    let server = start(config.clone());
    let http = HttpService::start(&server, &config)
        .expect("HTTP API starts")
        .expect("http.listen is set");
    (server, http.local_addr())
}

/// An HTTP/1.1 request, sent on a connection of its own (`Connection: close`).
struct Request {
    method: &'static str,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn new(method: &'static str, target: &str) -> Request {
        Request {
            method,
            target: target.to_owned(),
            headers: Vec::new(),
            body: String::new(),
        }
    }

    fn get(target: &str) -> Request {
        Request::new("GET", target)
    }

    /// A POST with a JSON body and the JSON content type.
    fn post_json(target: &str, body: Value) -> Request {
        Request::new("POST", target)
            .header("Content-Type", "application/json")
            .body(&body.to_string())
    }

    fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn key(self, key: &str) -> Request {
        self.header("Authorization", &format!("Bearer {key}"))
    }

    fn body(mut self, body: &str) -> Request {
        self.body = body.to_owned();
        self
    }

    /// The bytes on the wire; `Host` is `addr` unless the test set one.
    fn encode(&self, addr: SocketAddr) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.target);
        if !self.has("host") {
            head.push_str(&format!("Host: {addr}\r\n"));
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !self.has("transfer-encoding") && (!self.body.is_empty() || self.method == "POST") {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }

    fn has(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    async fn send(&self, addr: SocketAddr) -> Reply {
        let stream = TcpStream::connect(addr).await.expect("connect");
        exchange(stream, &self.encode(addr)).await
    }
}

/// Writes `request`, reads the answer to EOF and parses it.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &[u8]) -> Reply {
    stream.write_all(request).await.expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("answer within PATIENCE")
        .expect("read answer");
    Reply::parse(&raw)
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn parse(raw: &[u8]) -> Reply {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {text:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Reply {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Asserts the status and, for an error, the JSON error body's code.
    fn expect(&self, status: u16, code: Option<&str>) {
        assert_eq!(self.status, status, "{self:?}");
        if let Some(code) = code {
            let body = self.json();
            assert_eq!(body["error"], code, "{self:?}");
            assert!(body["message"].is_string(), "{self:?}");
        }
    }

    fn cors_headers(&self) -> Vec<&(String, String)> {
        self.headers
            .iter()
            .filter(|(n, _)| n.starts_with("access-control-"))
            .collect()
    }
}

#[actix_rt::test]
async fn bodies_not_declared_as_json_are_refused_before_any_effect() {
    let (server, http) = start_http(http_config());
    let (mut alice, _) = subscriber(server.local_addr(), "alice", "lobby").await;
    let (mut bob, _) = Client::hello(server.local_addr(), "bob").await;
    let publish = json!({"room": "lobby", "data": "forged"}).to_string();
    let send = json!({"to": "bob", "data": "forged"}).to_string();
    let disconnect = json!({"user": "bob"}).to_string();
    let refused: [Option<&str>; 10] = [
        None,
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("text/json"),
        Some("application/ld+json"),
        Some("application/jsonx"),
        Some("application/json, text/plain"),
        Some("nonsense"),
    ];
    for (path, body) in [
        ("/api/publish", &publish),
        ("/api/send", &send),
        ("/api/disconnect", &disconnect),
    ] {
        for content_type in refused {
            let mut req = Request::new("POST", path).body(body);
            if let Some(content_type) = content_type {
                req = req.header("Content-Type", content_type);
            }
            req.send(http)
                .await
                .expect(415, Some("unsupported_media_type"));
        }
        // Two content types, the first one JSON.
        Request::new("POST", path)
            .header("Content-Type", "application/json")
            .header("Content-Type", "text/plain")
            .body(body)
            .send(http)
            .await
            .expect(415, Some("unsupported_media_type"));
        // A chunked body says nothing of its length, and is still a body.
        Request::new("POST", path)
            .header("Content-Type", "text/plain")
            .header("Transfer-Encoding", "chunked")
            .body(&format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()))
            .send(http)
            .await
            .expect(415, Some("unsupported_media_type"));
    }
    // A body on a GET is a body too; no body needs no content type.
    Request::get("/api/stats")
        .header("Content-Type", "text/plain")
        .body("x")
        .send(http)
        .await
        .expect(415, Some("unsupported_media_type"));
    assert_eq!(Request::get("/api/stats").send(http).await.status, 200);

    // Nothing took effect: JSON (with parameters, in any case) is served, its publish is the
    // room's first, and Bob, still connected, gets the real message first.
    let reply = Request::new("POST", "/api/publish")
        .header("Content-Type", "Application/JSON; charset=utf-8")
        .body(&json!({"room": "lobby", "data": "real"}).to_string())
        .send(http)
        .await;
    assert_eq!((reply.status, reply.json()), (200, json!({"seq": 1})));
    let message = alice.recv_type("message").await;
    assert_eq!(
        (&message["seq"], &message["data"]),
        (&json!(1), &json!("real"))
    );
    let reply = Request::post_json("/api/send", json!({"to": "bob", "data": "real"}))
        .send(http)
        .await;
    assert_eq!((reply.status, reply.json()), (200, json!({"delivered": 1})));
    assert_eq!(bob.recv_type("message").await["data"], "real");
}

#[actix_rt::test]
async fn a_forged_host_is_refused_without_a_key() {
    let (server, http) = start_http(http_config());
    let (mut alice, _) = subscriber(server.local_addr(), "alice", "lobby").await;
    let forged = || {
        Request::post_json("/api/publish", json!({"room": "lobby", "data": "rebound"}))
            .header("Host", &format!("rebind.evil.example:{}", http.port()))
    };
    forged()
        .send(http)
        .await
        .expect(421, Some("misdirected_request"));
    // Headers a same-origin script may set do not vouch for the host.
    forged()
        .header("X-Forwarded-Host", "localhost")
        .header("Forwarded", "host=localhost")
        .send(http)
        .await
        .expect(421, Some("misdirected_request"));
    for host in [
        "evil.example",
        "localhost.evil.example",
        "127.0.0.1.evil.example",
        "10.1.2.3",
        "",
    ] {
        Request::get("/api/stats")
            .header("Host", host)
            .send(http)
            .await
            .expect(421, Some("misdirected_request"));
    }
    // An absolute request target names the host too.
    Request::get("http://evil.example/api/stats")
        .header("Host", "localhost")
        .send(http)
        .await
        .expect(421, Some("misdirected_request"));

    // Loopback names and addresses, with or without a port, are served.
    let port = http.port();
    for host in [
        format!("localhost:{port}"),
        "LOCALHOST".to_owned(),
        format!("127.0.0.1:{port}"),
        "127.7.7.7".to_owned(),
        format!("[::1]:{port}"),
    ] {
        let reply = Request::get("/api/stats")
            .header("Host", &host)
            .send(http)
            .await;
        assert_eq!(reply.status, 200, "{host}: {reply:?}");
    }
    // The refused publishes took no seq: this one is the room's first.
    let reply = Request::post_json("/api/publish", json!({"room": "lobby", "data": 1}))
        .header("Host", &format!("localhost:{port}"))
        .send(http)
        .await;
    assert_eq!((reply.status, reply.json()), (200, json!({"seq": 1})));
    assert_eq!(alice.recv_type("message").await["seq"], 1);

    // Probes and the scrape answer whatever the Host (SECURITY.md says why).
    for path in ["/healthz", "/readyz", "/metrics"] {
        let reply = Request::get(path)
            .header("Host", "evil.example")
            .send(http)
            .await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
    }
}

#[actix_rt::test]
async fn a_listed_host_is_served_without_a_key() {
    let mut c = http_config();
    c.http.allowed_hosts = vec!["push.internal".into(), "10.0.0.5:7780".into()];
    let (_server, http) = start_http(c);
    for (host, status) in [
        ("push.internal", 200),
        ("PUSH.internal:8080", 200),
        ("10.0.0.5:7780", 200),
        ("10.0.0.5:7781", 421),
        ("localhost", 200),
        ("other.internal", 421),
    ] {
        let reply = Request::get("/api/stats")
            .header("Host", host)
            .send(http)
            .await;
        assert_eq!(reply.status, status, "{host}: {reply:?}");
    }
}

#[actix_rt::test]
async fn a_key_lifts_the_host_check_unless_hosts_are_listed() {
    let mut c = http_config();
    c.http.api_key = Some("host-test-key".into());
    let (server, http) = start_http(c.clone());
    let (mut alice, _) = subscriber(server.local_addr(), "alice", "lobby").await;
    let publish = |host: &str| {
        Request::post_json("/api/publish", json!({"room": "lobby", "data": 1})).header("Host", host)
    };
    // Without the key the answer is about the key, not the host.
    publish("api.example.com")
        .send(http)
        .await
        .expect(401, Some("unauthorized"));
    let reply = publish("api.example.com")
        .key("host-test-key")
        .send(http)
        .await;
    assert_eq!((reply.status, reply.json()), (200, json!({"seq": 1})));
    assert_eq!(alice.recv_type("message").await["seq"], 1);

    c.http.allowed_hosts = vec!["api.example.com".into()];
    let (_server, http) = start_http(c);
    for (host, status) in [
        ("api.example.com", 200),
        ("localhost", 200),
        ("other.example.com", 421),
    ] {
        let reply = Request::get("/api/stats")
            .header("Host", host)
            .key("host-test-key")
            .send(http)
            .await;
        assert_eq!(reply.status, status, "{host}: {reply:?}");
    }
}

/// A browser's preflight for a JSON POST with a key.
fn preflight(origin: &str, method: &str) -> Request {
    Request::new("OPTIONS", "/api/publish")
        .header("Origin", origin)
        .header("Access-Control-Request-Method", method)
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
}

#[actix_rt::test]
async fn without_cors_origins_no_cors_header_is_ever_sent() {
    let (_server, http) = start_http(http_config());
    let reply = preflight("https://admin.example", "POST").send(http).await;
    assert!(!(200..300).contains(&reply.status), "{reply:?}");
    assert!(reply.cors_headers().is_empty(), "{reply:?}");
    for req in [
        Request::get("/api/stats"),
        Request::post_json("/api/publish", json!({"room": "r", "data": 1})),
        Request::new("POST", "/api/publish").header("Content-Type", "text/plain"),
    ] {
        let reply = req
            .header("Origin", "https://admin.example")
            .send(http)
            .await;
        assert!(reply.cors_headers().is_empty(), "{reply:?}");
    }
}

#[actix_rt::test]
async fn with_cors_origins_only_those_are_answered() {
    let mut c = http_config();
    c.http.api_keys = vec!["cors-test-key".into()];
    c.http.cors_origins = vec!["https://admin.example".into()];
    let (_server, http) = start_http(c);

    // The listed origin's preflight is answered, without the key (a browser sends none).
    let reply = preflight("https://admin.example", "POST").send(http).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://admin.example")
    );
    let methods = reply.header("access-control-allow-methods").unwrap_or("");
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{reply:?}"
    );
    let headers = reply
        .header("access-control-allow-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(
        headers.contains("authorization") && headers.contains("content-type"),
        "{reply:?}"
    );
    assert_eq!(reply.header("access-control-allow-credentials"), None);

    // Another origin's preflight is refused with a JSON error and no CORS header.
    let reply = preflight("https://evil.example", "POST").send(http).await;
    reply.expect(403, Some("forbidden"));
    assert!(reply.cors_headers().is_empty(), "{reply:?}");
    // So is a method the API does not use.
    preflight("https://admin.example", "DELETE")
        .send(http)
        .await
        .expect(400, Some("bad_request"));

    // Actual requests: the listed origin can read the answer, errors included.
    let reply = Request::get("/api/stats")
        .header("Origin", "https://admin.example")
        .key("cors-test-key")
        .send(http)
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://admin.example")
    );
    let reply = Request::get("/api/stats")
        .header("Origin", "https://admin.example")
        .send(http)
        .await;
    reply.expect(401, Some("unauthorized"));
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://admin.example")
    );
    let reply = Request::get("/api/stats")
        .header("Origin", "https://evil.example")
        .key("cors-test-key")
        .send(http)
        .await;
    assert!(reply.cors_headers().is_empty(), "{reply:?}");
}

#[actix_rt::test]
async fn two_keys_are_valid_at_once_and_a_removed_key_is_refused() {
    let mut c = http_config();
    c.http.api_key = Some("old-key-0001".into());
    c.http.api_keys = vec!["new-key-0002".into()];
    let (server, http) = start_http(c.clone());
    let (mut alice, _) = subscriber(server.local_addr(), "alice", "lobby").await;
    for (n, key) in ["old-key-0001", "new-key-0002"].into_iter().enumerate() {
        let reply = Request::post_json("/api/publish", json!({"room": "lobby", "data": key}))
            .key(key)
            .send(http)
            .await;
        assert_eq!((reply.status, reply.json()), (200, json!({"seq": n + 1})));
        assert_eq!(alice.recv_type("message").await["data"], key);
    }
    for wrong in [
        "new-key-0003",
        "new-key-000",
        "new-key-00022",
        "old-key-0001new-key-0002",
    ] {
        Request::post_json("/api/publish", json!({"room": "lobby", "data": wrong}))
            .key(wrong)
            .send(http)
            .await
            .expect(401, Some("unauthorized"));
    }
    // None of them took a seq.
    let reply = Request::post_json("/api/publish", json!({"room": "lobby", "data": "third"}))
        .key("new-key-0002")
        .send(http)
        .await;
    assert_eq!((reply.status, reply.json()), (200, json!({"seq": 3})));
    assert_eq!(alice.recv_type("message").await["data"], "third");

    // The rotation's last step: the old key is dropped.
    c.http.api_key = None;
    let (_server, http) = start_http(c);
    Request::get("/api/stats")
        .key("old-key-0001")
        .send(http)
        .await
        .expect(401, Some("unauthorized"));
    assert_eq!(
        Request::get("/api/stats")
            .key("new-key-0002")
            .send(http)
            .await
            .status,
        200
    );
}

#[cfg(feature = "tls")]
mod tls {

    use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader, Lines};
    use tokio_rustls::rustls::pki_types::ServerName;

    use super::*;
    use heartwire::StartError;

    /// The next frame that is not a ping.
    async fn next_frame<R: AsyncBufRead + Unpin>(lines: &mut Lines<R>) -> Value {
        loop {
            let line = tokio::time::timeout(PATIENCE, lines.next_line())
                .await
                .expect("a frame within PATIENCE")
                .unwrap()
                .expect("connection open");
            let frame: Value = serde_json::from_str(&line).unwrap();
            if frame["type"] != "ping" {
                return frame;
            }
        }
    }

    #[actix_rt::test]
    async fn https_serves_the_api_with_the_servers_certificate() {
        let (ca, tls) = crate::common::test_tls();
        let mut c = http_config();
        c.tls = tls;
        c.http.tls = true;
        let (server, http) = start_http(c);
        let connector = heartwire::testing::tls_connector(&ca);
        let localhost = ServerName::try_from("localhost").unwrap();

        // A subscriber on the TCP listener, which serves the same certificate.
        let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
        let tls = connector
            .connect(localhost.clone(), tcp)
            .await
            .expect("TCP TLS");
        let (read, mut write) = tokio::io::split(tls);
        let mut lines = BufReader::new(read).lines();
        write
            .write_all(b"{\"type\":\"hello\",\"user\":\"alice\"}\n{\"type\":\"subscribe\",\"room\":\"lobby\"}\n")
            .await
            .unwrap();
        assert_eq!(next_frame(&mut lines).await["type"], "welcome");
        assert_eq!(next_frame(&mut lines).await["type"], "subscribed");

        // A publish over HTTPS, verified against the test CA.
        let https = |req: Request| {
            let connector = connector.clone();
            let localhost = localhost.clone();
            async move {
                let tcp = TcpStream::connect(http).await.unwrap();
                let tls = connector
                    .connect(localhost, tcp)
                    .await
                    .expect("HTTPS handshake");
                exchange(tls, &req.encode(http)).await
            }
        };
        let reply = https(Request::post_json(
            "/api/publish",
            json!({"room": "lobby", "data": "over https"}),
        ))
        .await;
        assert_eq!((reply.status, reply.json()), (200, json!({"seq": 1})));
        let message = next_frame(&mut lines).await;
        assert_eq!(
            (&message["type"], &message["data"]),
            (&json!("message"), &json!("over https"))
        );
        // The operations endpoints follow.
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(https(Request::get(path)).await.status, 200, "{path}");
        }

        // Plain HTTP on the HTTPS port gets no HTTP answer.
        let mut plain = TcpStream::connect(http).await.unwrap();
        plain
            .write_all(&Request::get("/healthz").encode(http))
            .await
            .unwrap();
        let mut raw = Vec::new();
        let read = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut raw)).await;
        assert!(read.is_ok(), "the plain-text client was not disconnected");
        assert!(!String::from_utf8_lossy(&raw).contains("\"ok\""), "{raw:?}");
    }

    #[actix_rt::test]
    async fn https_without_a_certificate_names_the_key() {
        let mut c = http_config();
        c.http.tls = true;
        let server = start(c.clone());
        match HttpService::start(&server, &c) {
            Err(StartError::Config(e)) => {
                let e = e.to_string();
                assert!(e.contains("http.tls") && e.contains("tls.cert"), "{e}");
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("served HTTPS without a certificate"),
        }
    }
}

/// The `heartwire` binary: key files, and keys kept out of logs and `--help`.
#[cfg(feature = "cli")]
mod binary {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::common::process::{read_to_end, run_to_exit, serve_command as serve};
    use crate::common::process::{ChildGuard, TempFile};

    const FILE_KEY_1: &str = "file-key-7c1e0a9b";
    const FILE_KEY_2: &str = "file-key-52d4f38e";
    const ENV_KEY: &str = "env-key-9a7b3c5d";

    #[actix_rt::test]
    async fn key_file_keys_are_accepted_and_no_key_is_logged_at_debug() {
        let file = TempFile::new(
            "keys",
            &format!(
                "# rotation: {FILE_KEY_1} goes once every client has the second one\n\
             {FILE_KEY_1}\n\n  {FILE_KEY_2}  \n"
            ),
        );
        let mut child = ChildGuard::spawn(
            serve(
                &[
                    "--listen",
                    "127.0.0.1:0",
                    "--http",
                    "127.0.0.1:0",
                    "--api-key-file",
                    file.path(),
                ],
                &[("HEARTWIRE_API_KEY", ENV_KEY), ("RUST_LOG", "debug")],
            )
            .stderr(Stdio::piped()),
        );
        let log = read_to_end(child.0.stderr.take().unwrap());
        let lines = child.stdout_lines();
        let http = child.announced(&lines, "http on ");

        for (n, key) in [FILE_KEY_1, FILE_KEY_2, ENV_KEY].into_iter().enumerate() {
            let reply = Request::post_json("/api/publish", json!({"room": "r", "data": n}))
                .key(key)
                .send(http)
                .await;
            assert_eq!((reply.status, reply.json()), (200, json!({"seq": n + 1})));
        }
        let near_miss = format!("{FILE_KEY_2}x");
        for wrong in [near_miss.as_str(), "file-key", ""] {
            Request::get("/api/stats")
                .key(wrong)
                .send(http)
                .await
                .expect(401, Some("unauthorized"));
        }

        let killed = Command::new("kill")
            .args(["-TERM", &child.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success());
        let until = Instant::now() + PATIENCE;
        while child.0.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < until, "no exit after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = String::from_utf8_lossy(&log.join().unwrap()).into_owned();
        // The capture works, at debug: the publishes and the refusals are in it.
        assert!(log.contains("HTTP publish"), "no debug output:\n{log}");
        assert!(log.contains("wrong API key"), "{log}");
        for key in [FILE_KEY_1, FILE_KEY_2, ENV_KEY, "file-key-"] {
            assert!(!log.contains(key), "a key is in the log:\n{log}");
        }
    }

    #[test]
    fn unusable_key_files_are_named_and_fail_the_start() {
        let missing = "/nonexistent/heartwire-keys";
        let out = run_to_exit(serve(&["--api-key-file", missing], &[]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("--api-key-file") && err.contains(missing),
            "{err}"
        );

        let empty = TempFile::new("keys", "# nothing yet\n\n");
        let out = run_to_exit(serve(&["--api-key-file", empty.path()], &[]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("--api-key-file") && err.contains("no key"),
            "{err}"
        );

        let spaced = TempFile::new("keys", "fine-key\nnot a key\n");
        let out = run_to_exit(serve(
            &["--listen", "127.0.0.1:0"],
            &[("HEARTWIRE_API_KEY_FILE", spaced.path())],
        ));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("--api-key-file") && err.contains("line 2"),
            "{err}"
        );
        assert!(
            !err.contains("not a key") && !err.contains("fine-key"),
            "{err}"
        );
    }

    #[test]
    fn help_lists_the_flags_and_never_a_key() {
        let out = run_to_exit(serve(&["--help"], &[("HEARTWIRE_API_KEY", ENV_KEY)]));
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        for flag in [
            "--api-key ",
            "--api-key-file",
            "--http-tls",
            "--http-allowed-hosts",
            "--http-cors-origins",
        ] {
            assert!(help.contains(flag), "no {flag}:\n{help}");
        }
        assert!(!help.contains(ENV_KEY), "the key is in --help:\n{help}");
        assert!(help.contains("HEARTWIRE_API_KEY"), "{help}");
    }
}
