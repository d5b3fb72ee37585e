//! A TCP proxy on loopback in front of an HTTP/1.1 server that injects the
//! faults a client must survive: a connection dropped part-way through a
//! request body or a response body, and request headers removed (a server
//! without conditional writes never sees `If-Match`/`If-None-Match`).
//! It parses just enough HTTP to find bodies; keep-alive works.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub struct FaultProxy {
    address: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    faults: Mutex<Faults>,
    /// "METHOD path" of every request forwarded, in order.
    requests: Mutex<Vec<String>>,
    connections: Mutex<Vec<TcpStream>>,
    stopping: AtomicBool,
}

#[derive(Default)]
struct Faults {
    /// The request bodies longer than this are cut after it, this many times.
    drop_request_body_after: Option<(usize, usize)>,
    /// The response bodies longer than this are cut after it, this many times.
    drop_response_body_after: Option<(usize, usize)>,
    /// Lower-case header names removed from every request.
    stripped_headers: Vec<String>,
    /// Requests whose "METHOD path" starts with this are held.
    held_paths: Option<String>,
    connections_dropped: usize,
}

impl Faults {
    fn request_cut(&mut self) -> &mut Option<(usize, usize)> {
        &mut self.drop_request_body_after
    }

    fn response_cut(&mut self) -> &mut Option<(usize, usize)> {
        &mut self.drop_response_body_after
    }
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let address = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let acceptor = {
            let state = state.clone();
            std::thread::spawn(move || accept_loop(listener, upstream, state))
        };
        FaultProxy {
            address,
            state,
            acceptor: Some(acceptor),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Cuts the connection of the next request whose body is longer than
    /// `bytes`, after forwarding `bytes` of it.
    pub fn drop_next_request_body_after(&self, bytes: usize) {
        self.drop_request_bodies_after(bytes, 1);
    }

    /// Cuts the next `times` requests whose bodies are longer than `bytes`.
    pub fn drop_request_bodies_after(&self, bytes: usize, times: usize) {
        self.state.faults.lock().unwrap().drop_request_body_after = Some((bytes, times));
    }

    /// Holds every later request whose "METHOD path" starts with `pattern`
    /// before forwarding it: its client waits, as on a stalled network,
    /// until `release_held` or the proxy stops. `requests()` lists a held
    /// request.
    pub fn hold_requests(&self, pattern: &str) {
        self.state.faults.lock().unwrap().held_paths = Some(pattern.to_owned());
    }

    /// Forwards the held requests, and holds no more.
    pub fn release_held(&self) {
        self.state.faults.lock().unwrap().held_paths = None;
    }

    /// Forwards every later request body whole.
    pub fn stop_dropping_request_bodies(&self) {
        self.state.faults.lock().unwrap().drop_request_body_after = None;
    }

    /// Cuts the connection of the next response whose body is longer than
    /// `bytes`, after forwarding `bytes` of it.
    pub fn drop_next_response_body_after(&self, bytes: usize) {
        self.state.faults.lock().unwrap().drop_response_body_after = Some((bytes, 1));
    }

    /// Removes the header `name` (any case) from every later request.
    pub fn strip_request_header(&self, name: &str) {
        let mut faults = self.state.faults.lock().unwrap();
        faults.stripped_headers.push(name.to_ascii_lowercase());
    }

    /// How many connections a fault has cut so far.
    pub fn connections_dropped(&self) -> usize {
        self.state.faults.lock().unwrap().connections_dropped
    }

    /// "METHOD path" of every request forwarded so far (a cut request too).
    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then sees `stopping`.
        let _ = TcpStream::connect(self.address);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for connection in self.state.connections.lock().unwrap().drain(..) {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, state: Arc<State>) {
    for client in listener.incoming() {
        if state.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(upstream) else {
            continue; // The client sees its connection closed.
        };
        let connection = Connection {
            client,
            server,
            state: state.clone(),
        };
        {
            let mut connections = state.connections.lock().unwrap();
            connections.push(connection.client.try_clone().unwrap());
            connections.push(connection.server.try_clone().unwrap());
        }
        let (methods_sender, methods) = channel();
        let requests = connection.clone_streams();
        std::thread::spawn(move || {
            let _ = requests.forward_requests(methods_sender);
        });
        std::thread::spawn(move || {
            let _ = connection.forward_responses(methods);
        });
    }
}

struct Connection {
    client: TcpStream,
    server: TcpStream,
    state: Arc<State>,
}

enum Body {
    Length(usize),
    /// Chunked or until close: forwarded as is, with no fault.
    Rest,
}

struct Message {
    start_line: String,
    headers: Vec<String>,
}

impl Message {
    /// Reads a start line and headers; None at a clean end of stream.
    fn read(reader: &mut impl BufRead) -> std::io::Result<Option<Message>> {
        let mut start_line = String::new();
        if reader.read_line(&mut start_line)? == 0 {
            return Ok(None);
        }
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line == "\r\n" || line == "\n" {
                return Ok(Some(Message {
                    start_line,
                    headers,
                }));
            }
            headers.push(line);
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    fn body(&self) -> Body {
        let chunked = self
            .header("transfer-encoding")
            .is_some_and(|value| value.eq_ignore_ascii_case("chunked"));
        match self.header("content-length").map(str::parse) {
            Some(Ok(length)) if !chunked => Body::Length(length),
            _ => Body::Rest,
        }
    }

    fn write(&self, out: &mut impl Write, stripped: &[String]) -> std::io::Result<()> {
        let mut bytes = self.start_line.clone();
        for line in &self.headers {
            let name = line
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if !stripped.contains(&name) {
                bytes.push_str(line);
            }
        }
        bytes.push_str("\r\n");
        out.write_all(bytes.as_bytes())
    }
}

impl Connection {
    fn clone_streams(&self) -> Connection {
        Connection {
            client: self.client.try_clone().unwrap(),
            server: self.server.try_clone().unwrap(),
            state: self.state.clone(),
        }
    }

    /// Counts first: the client may look as soon as it sees the cut.
    fn cut(&self) {
        self.state.faults.lock().unwrap().connections_dropped += 1;
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }

    fn forward_requests(&self, methods: Sender<String>) -> std::io::Result<()> {
        let mut reader = BufReader::new(&self.client);
        let mut server = &self.server;
        while let Some(request) = Message::read(&mut reader)? {
            let method = request
                .start_line
                .split(' ')
                .next()
                .unwrap_or("")
                .to_string();
            let path = request.start_line.split(' ').nth(1).unwrap_or("");
            self.state
                .requests
                .lock()
                .unwrap()
                .push(format!("{method} {path}"));
            let line = format!("{method} {path}");
            let held = || {
                let faults = self.state.faults.lock().unwrap();
                faults
                    .held_paths
                    .as_ref()
                    .is_some_and(|p| line.starts_with(p))
            };
            while held() && !self.state.stopping.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let stripped = self.state.faults.lock().unwrap().stripped_headers.clone();
            request.write(&mut server, &stripped)?;
            let _ = methods.send(method);
            let body = request.body();
            if !self.forward_body(&mut reader, &mut server, body, Faults::request_cut)? {
                return Ok(());
            }
        }
        self.server.shutdown(Shutdown::Write)
    }

    fn forward_responses(&self, methods: Receiver<String>) -> std::io::Result<()> {
        let mut reader = BufReader::new(&self.server);
        let mut client = &self.client;
        while let Some(response) = Message::read(&mut reader)? {
            response.write(&mut client, &[])?;
            let status = response.start_line.split(' ').nth(1).unwrap_or("");
            if status.starts_with('1') {
                continue; // Interim: the final response follows.
            }
            let method = methods.recv().unwrap_or_default();
            let body = if method == "HEAD" || status == "204" || status == "304" {
                Body::Length(0)
            } else {
                response.body()
            };
            if !self.forward_body(&mut reader, &mut client, body, Faults::response_cut)? {
                return Ok(());
            }
        }
        self.client.shutdown(Shutdown::Write)
    }

    /// Forwards one body; false once the connection is cut or passed through.
    fn forward_body(
        &self,
        from: &mut impl BufRead,
        to: &mut impl Write,
        body: Body,
        armed: fn(&mut Faults) -> &mut Option<(usize, usize)>,
    ) -> std::io::Result<bool> {
        let length = match body {
            Body::Rest => {
                std::io::copy(from, to)?;
                return Ok(false);
            }
            Body::Length(length) => length,
        };
        let cut_at = {
            let mut faults = self.state.faults.lock().unwrap();
            let fault = armed(&mut faults);
            match *fault {
                Some((limit, times)) if length > limit => {
                    *fault = (times > 1).then_some((limit, times - 1));
                    Some(limit)
                }
                _ => None,
            }
        };
        let forwarded = std::io::copy(&mut from.take(cut_at.unwrap_or(length) as u64), to)?;
        to.flush()?;
        if cut_at.is_some() {
            self.cut();
            return Ok(false);
        }
        if forwarded < length as u64 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(true)
    }
}
