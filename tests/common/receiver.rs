//! An HTTP receiver for delivery tests: a small HTTP/1.1 server on loopback, in a thread
//! of its own, that records every request and answers as the test tells it: a status
//! (200, 404, 500, …), a status with a body, 429 with `Retry-After`, or a hang-up (the connection closed without
//! an answer).
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Status(u16),
    /// 429 with `Retry-After: <seconds>`.
    TooManyRequests {
        retry_after_s: u64,
    },
    /// Close the connection without answering.
    HangUp,
    /// A status with this body (`text/plain`).
    StatusWithBody {
        status: u16,
        body: &'static str,
    },
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lowercase.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// What the receiver answered.
    pub answer: Answer,
}

impl Request {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn delivered(&self) -> bool {
        matches!(self.answer, Answer::Status(200..=299))
    }
}

#[derive(Default)]
struct State {
    scripted: VecDeque<Answer>,
    default: Option<Answer>,
    requests: Vec<Request>,
}

pub struct Receiver {
    pub address: String,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// A receiver on a free loopback port, answering 200.
    pub fn start() -> Receiver {
        Receiver::start_on("127.0.0.1:0")
    }

    /// A receiver on `address` (a port the test chose earlier, e.g. for a receiver that
    /// comes up late).
    pub fn start_on(address: &str) -> Receiver {
        let listener = std::net::TcpListener::bind(address).expect("bind the test receiver");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let address = listener.local_addr().expect("receiver address").to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = state.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("receiver runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("tokio listener");
                let accept = async {
                    loop {
                        let Ok((socket, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(serve(socket, serving.clone()));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Receiver {
            address,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// The next requests get these answers, in order; then the default.
    pub fn script(&self, answers: &[Answer]) {
        self.state.lock().unwrap().scripted.extend(answers.iter().copied());
    }

    /// The answer once the script is used up (200 unless set).
    pub fn answer_by_default(&self, answer: Answer) {
        self.state.lock().unwrap().default = Some(answer);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves one connection: requests one after another (keep-alive) until the peer closes
/// it or the answer is a hang-up.
async fn serve(mut socket: TcpStream, state: Arc<Mutex<State>>) {
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let Some((method, path, headers, body)) = read_request(&mut socket, &mut buffer).await else {
            return;
        };
        let answer = {
            let mut state = state.lock().unwrap();
            let answer = state
                .scripted
                .pop_front()
                .or(state.default)
                .unwrap_or(Answer::Status(200));
            state.requests.push(Request {
                method,
                path,
                headers,
                body,
                answer,
            });
            answer
        };
        let response = match answer {
            Answer::HangUp => return,
            Answer::Status(status) => {
                format!("HTTP/1.1 {status} Test\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok")
            }
            Answer::StatusWithBody { status, body } => format!(
                "HTTP/1.1 {status} Test\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
                body.len()
            ),
            Answer::TooManyRequests { retry_after_s } => format!(
                "HTTP/1.1 429 Too Many Requests\r\nretry-after: {retry_after_s}\r\ncontent-length: 4\r\n\r\nslow"
            ),
        };
        if socket.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

type Parsed = (String, String, HashMap<String, String>, Vec<u8>);

async fn read_request(socket: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Parsed> {
    let header_end = loop {
        if let Some(position) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break position;
        }
        let mut chunk = [0u8; 8192];
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let body_start = header_end + 4;
    while buffer.len() < body_start + length {
        let mut chunk = [0u8; 65536];
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let body = buffer[body_start..body_start + length].to_vec();
    buffer.drain(..body_start + length);
    Some((method, path, headers, body))
}
