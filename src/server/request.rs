//! What each HTTP request gets: a page, a file, an API answer, or an upgrade.
//!
//! [`Server::on_request`] runs for every whole request, in the order the
//! requests arrived on the connection, and says what to do with it as an
//! [`Answer`]; `respond.rs` carries that out, keeping pipelined answers in
//! order. The answer follows from the method and the path: we serve GET
//! and HEAD everywhere, POST and DELETE under `/api/` (the server API,
//! `backend.rs`, the only requests whose body is read), and OPTIONS (CORS
//! preflights) for the API and the client module.

use log::debug;

use crate::conn::{Door, Parked, WsState};
use crate::handshake::{self, wants_upgrade};
use crate::http::framing::Request;
use crate::http::{Head, Method};
use crate::response::Response;
use crate::route::Endpoint;
use crate::server::Server;
use crate::site::{self, Missing};

/// What a request gets.
pub(super) enum Answer {
    /// This response, now.
    Now(Response),
    /// A response that waits for the storage thread: the connection is
    /// parked until it comes, sent as this says.
    Later(Parked),
    /// The connection is a WebSocket now; these bytes came glued to the
    /// upgrade request (its first frames).
    Upgraded(Vec<u8>),
}

/// The client module sites embed (`www/js/chatroom-client.js`), which
/// pages of other origins may load (CORS).
const CLIENT_MODULE: &str = "/js/chatroom-client.js";

/// The answer to a CORS preflight (`OPTIONS`) of the API or the client
/// module: for a listed origin, what it may send (the CORS headers are
/// added by the caller); for any other origin, 403.
fn preflight(head: &Head, cors: Option<&str>) -> Response {
    if head.header("origin").is_some() && cors.is_none() {
        return Response::text(403, "this Origin is not allowed here (see --allow-origin)");
    }
    Response::new(204)
        .header("Allow", "GET, HEAD, POST, DELETE, OPTIONS")
        .header("Access-Control-Allow-Methods", "GET, HEAD, POST, DELETE")
        .header("Access-Control-Allow-Headers", "Authorization, Content-Type")
        .header("Access-Control-Max-Age", "600")
}

impl Server {
    /// Decides what request `request` on connection `key` gets.
    pub(super) fn on_request(&mut self, key: usize, request: Request) -> Answer {
        let head = request.head;
        if !self.on_client_address(key, &head) {
            let r = Response::text(503, "too many connections from your address").header("Retry-After", "1");
            return Answer::Now(r.close(true));
        }
        let door = self.conns.get(key).map_or(Door::Main, |c| c.door());
        if door == Door::Redirect {
            return Answer::Now(self.redirect(&head).close(!head.keep_alive()));
        }
        let path = head.path().to_string();
        // With --admin-bind, the operations endpoints live on their own
        // listener (bound to 127.0.0.1 in the deploy example) and nowhere
        // else, and that listener serves nothing but them.
        if self.admin_addr().is_some() {
            let from_admin = door == Door::Admin;
            let allowed = if from_admin { is_ops_path(&path) || is_ops_asset(&path) } else { !is_ops_path(&path) };
            if !allowed {
                return Answer::Now(self.not_found().close(!head.keep_alive()));
            }
        }
        if path.starts_with("/ws/") || wants_upgrade(&head) {
            return self.on_upgrade(key, head);
        }
        // While shutting down, every answer is the connection's last.
        let keep_alive = head.keep_alive() && !self.is_draining();
        let head_only = head.method == Some(Method::Head);
        // The API and the client module may be read by pages of the sites
        // `--allow-origin` lists (CORS); nothing else is shared.
        let shared = path.starts_with("/api/") || path == CLIENT_MODULE;
        let cors = handshake::cors_origin(&head, &self.cfg.allow_origin).filter(|_| shared);
        let response = match (head.method, path.strip_prefix("/api/")) {
            (Some(Method::Get | Method::Head), _) => self.answer(key, &head, &path),
            (Some(Method::Post | Method::Delete), Some(api)) => self.on_backend(key, &head, api, &request.body),
            (Some(Method::Options), _) if shared => Some(preflight(&head, cors)),
            _ => Some(Response::text(405, "only GET and HEAD are served here").header("Allow", "GET, HEAD")),
        };
        match response {
            Some(response) => Answer::Now(response.cors(cors).head_only(head_only).close(!keep_alive)),
            None => Answer::Later(Parked { head_only, keep_alive, cors: cors.map(Box::from) }),
        }
    }

    /// Behind a trusted proxy, learns the client's address from
    /// X-Forwarded-For on the first request and applies `--max-per-ip` to it.
    /// Returns false if that address has too many connections.
    fn on_client_address(&mut self, key: usize, head: &Head) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let (_, counted) = conn.ip();
        if counted || self.cfg.trusted_proxy.is_empty() {
            return true;
        }
        let forwarded = crate::limits::forwarded_client(head, &self.cfg.trusted_proxy);
        conn.set_client_ip(forwarded, true);
        let (ip, _) = conn.ip();
        let admitted = self.per_ip.admit(ip);
        if !admitted {
            conn.set_client_ip(None, false);
        }
        admitted
    }

    /// The response to a GET/HEAD of `path`, or `None` if it will be sent
    /// later (the connection is parked until then).
    fn answer(&mut self, key: usize, head: &Head, path: &str) -> Option<Response> {
        match path {
            "/healthz" => return Some(Response::json(200, br#"{"status":"alive"}"#.to_vec())),
            "/readyz" => return Some(self.readiness()),
            "/metrics" => {
                let mut body = self.metrics.render(&self.gauges());
                if let (Some(bus), Some(cluster)) = (&self.bus, &self.cluster) {
                    let nodes = bus.node_states(cluster.posts_sent_by_slot());
                    body.push_str(&crate::metrics::render_cluster_nodes(&nodes));
                }
                return Some(
                    Response::new(200)
                        .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                        .header("Cache-Control", "no-store")
                        .with_body(body.into_bytes()),
                );
            }
            _ => {}
        }
        if let Some(api) = path.strip_prefix("/api/") {
            let viewer = self.viewer(head);
            return self.on_api(key, api, head.query(), viewer);
        }
        let rel = match site::page_for(path) {
            Some(page) => Ok(page),
            None => site::safe_relative_path(path),
        };
        let file = rel.and_then(|rel| self.site.file(rel));
        Some(match file {
            Ok(file) => site::file_response(file, head.header_str("if-none-match")),
            // A room page with a name no room can have is simply not found;
            // elsewhere a malformed path (traversal tricks) is a bad request.
            Err(Missing::BadPath) if path.starts_with("/room/") => self.not_found(),
            Err(Missing::BadPath) => Response::text(400, "bad path"),
            Err(Missing::NotFound) => self.not_found(),
        })
    }

    /// The 404 page (or plain text if the site has none).
    fn not_found(&self) -> Response {
        match self.site.file("404.html") {
            Ok(file) => {
                let mut r =
                    Response::new(404).header("Content-Type", file.content_type).header("Cache-Control", "no-cache");
                r = r.page_headers();
                r.set_body(file.body);
                r
            }
            Err(_) => Response::text(404, "not found"),
        }
    }

    /// `/readyz`: 200 while serving, 503 while shutting down, without
    /// storage, or with its data file deleted or replaced (`"storage": "lost"`).
    fn readiness(&self) -> Response {
        let ready = self.is_ready();
        let redis = match self.gauges().redis_up {
            None => "disabled",
            Some(true) => "up",
            Some(false) => "down",
        };
        let mut body = serde_json::json!({
            "ready": ready,
            "storage": match (&self.storage, &self.storage_problem) {
                (None, _) => "closed",
                (Some(_), Some(_)) => "lost",
                (Some(_), None) => "open",
            },
            "redis": redis,
        });
        // With --redis-cluster: ok, degraded (a master away, or slots
        // without one) or down (no slot map yet).
        if let (Some(state), Some(fields)) = (self.bus.as_ref().and_then(|b| b.cluster_state()), body.as_object_mut()) {
            fields.insert("redis_cluster".into(), state.into());
        }
        Response::json(if ready { 200 } else { 503 }, body.to_string().into_bytes())
    }

    /// A request for `/ws/...` or with `Upgrade: websocket`.
    fn on_upgrade(&mut self, key: usize, head: Head) -> Answer {
        if self.is_draining() {
            return Answer::Now(Response::text(503, "shutting down").header("Retry-After", "1").close(true));
        }
        let mut upgrade = match handshake::validate(&head, &self.cfg.allow_origin) {
            Ok(upgrade) => upgrade,
            Err(refusal) => {
                self.metrics.reject(refusal.label);
                debug!("handshake refused ({}): {}", refusal.status, refusal.reason);
                let mut r = Response::text(refusal.status, refusal.reason).close(true);
                if refusal.status == 426 {
                    r = r.header("Sec-WebSocket-Version", "13");
                }
                return Answer::Now(r);
            }
        };
        // Who a chat member is, checked once, here. Room admission is
        // decided before the 101, so a refused join is an HTTP answer the
        // client can read, not a socket that opens and shuts; but only for
        // a member the room would take: to anyone else a private room's
        // state (is it live?) stays hidden, and they get the 4403 after
        // the upgrade whatever it is.
        let ip = self.conns.get(key).map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.ip().0);
        let identity = match &upgrade.endpoint {
            Endpoint::Room(room) => self.identify(&head, room, ip),
            _ => Ok(None),
        };
        if let Endpoint::Room(room) = &upgrade.endpoint
            && identity.is_ok()
            && let Err(refusal) = self.chat.admit(room)
        {
            self.metrics.reject(refusal.label);
            return Answer::Now(Response::text(refusal.status, refusal.reason).close(true));
        }
        let mut settings = self.cfg.compression;
        if upgrade.endpoint == Endpoint::Inspect {
            // The learn page shows frames as they are unless it asks to see
            // them compressed (`?deflate=1`); then each message alone, so
            // the inspector can inflate every one it is shown.
            if crate::route::query_value(head.query(), "deflate").as_deref() != Some("1") {
                settings.mode = crate::deflate::Mode::Off;
            } else if settings.mode == crate::deflate::Mode::Dedicated {
                settings.mode = crate::deflate::Mode::Shared;
            }
        }
        let settings = &settings;
        upgrade.extension = crate::deflate::negotiate(head.header_strs("sec-websocket-extensions"), settings);
        let answer = upgrade.extension.as_ref().map(|(_, answer)| answer.as_str());
        if let Some(conn) = self.conns.get_mut(key) {
            conn.queue_bytes(&handshake::response_101(&upgrade.accept, answer));
        }
        let extension = upgrade
            .extension
            .as_ref()
            .map(|(agreed, _)| crate::deflate::Extension::new(*agreed, settings, self.cfg.max_message));
        let leftover = self.upgrade(key, WsState::new(upgrade.endpoint.clone(), self.cfg.max_message, extension));
        self.on_ws_open(key, &head, &upgrade, identity);
        self.mark_dirty(key);
        // Bytes that came glued to the head are the first frames: they are
        // handled after the greeting, as if they had arrived a moment later.
        Answer::Upgraded(leftover)
    }
}

/// The operations endpoints, served only by `--admin-bind` when it is set.
fn is_ops_path(path: &str) -> bool {
    matches!(path, "/metrics" | "/healthz" | "/readyz" | "/stats" | "/stats/" | "/ws/stats")
}

/// The files the stats page needs, served by both listeners.
fn is_ops_asset(path: &str) -> bool {
    matches!(path, "/js/stats.js" | "/js/common.js" | "/css/style.css" | "/favicon.svg")
}

impl Response {
    /// Sets an owned body (builder style).
    pub fn with_body(mut self, body: Vec<u8>) -> Response {
        self.set_body(crate::outbuf::Chunk::Owned(body));
        self
    }
}

impl Server {
    /// A request on `--redirect-bind`: an ACME challenge file from
    /// `--acme-dir`, or a 308 to the same URL on `https://`. (The
    /// challenge file is read here, on the reactor: a few dozen bytes,
    /// asked for once per certificate renewal.)
    fn redirect(&self, head: &Head) -> Response {
        use crate::tls::redirect;
        if let Some(token) = redirect::acme_token(head.path()) {
            let Some(dir) = &self.cfg.acme_dir else { return self.not_found() };
            // `--acme-dir` is certbot's webroot (`--webroot -w DIR`): the
            // token files are in its `.well-known/acme-challenge/`.
            return match std::fs::read(dir.join(".well-known/acme-challenge").join(token)) {
                Ok(bytes) => {
                    let mut r = Response::new(200).header("Content-Type", "application/octet-stream");
                    r.set_body(crate::outbuf::Chunk::Owned(bytes));
                    r.head_only(head.method == Some(Method::Head))
                }
                Err(e) => {
                    debug!("acme-challenge {token}: {e}");
                    self.not_found()
                }
            };
        }
        match redirect::location(head.header("host"), &head.target, self.local_addr.port()) {
            Some(url) => Response::text(308, &format!("Moved to {url}")).header("Location", &url),
            None => Response::text(400, "a request here needs a Host header and a path; use https://"),
        }
    }
}
