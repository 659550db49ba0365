//! A scripted HTTP server on 127.0.0.1 standing in for a vendor API (Slack, Teams, Salesforce,
//! HubSpot, a webhook receiver): it records every request with its arrival time and answers as
//! the test's script says.

use leadwatch::clock::Clock;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;

/// One request the server got.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl ApiRequest {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    /// `POST /path`
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// An answer: status, headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Answer {
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// Decides the answer to a request, given every request received before it (same server).
pub type Script = Arc<dyn Fn(&ApiRequest, &[ApiRequest]) -> Answer + Send + Sync>;

type Shared = (Arc<Mutex<Vec<ApiRequest>>>, Script);

pub struct Api {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    requests: Arc<Mutex<Vec<ApiRequest>>>,
    _stop: oneshot::Sender<()>,
}

impl Api {
    pub async fn start(
        script: impl Fn(&ApiRequest, &[ApiRequest]) -> Answer + Send + Sync + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, Arc::new(script))
    }

    /// Starts on a given address (a receiver that comes back on the port it was down on).
    pub async fn start_on(
        addr: std::net::SocketAddr,
        script: impl Fn(&ApiRequest, &[ApiRequest]) -> Answer + Send + Sync + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, Arc::new(script))
    }

    /// As [`Api::start_on`], on a listener the test bound beforehand (so that no one else could
    /// take its port meanwhile).
    pub fn start_with(
        listener: tokio::net::TcpListener,
        script: impl Fn(&ApiRequest, &[ApiRequest]) -> Answer + Send + Sync + 'static,
    ) -> Self {
        Self::serve(listener, Arc::new(script))
    }

    fn serve(listener: tokio::net::TcpListener, script: Script) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .fallback(handle)
            .with_state((requests.clone(), script));
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            base: format!("http://{addr}"),
            requests,
            _stop: stop,
        }
    }

    pub fn requests(&self) -> Vec<ApiRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests whose path is `path`.
    pub fn to(&self, path: &str) -> Vec<ApiRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

async fn handle(
    State((requests, script)): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = ApiRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        headers,
        body,
        at: Clock::system().instant(),
    };
    let answer = {
        let mut all = requests.lock().unwrap();
        let answer = script(&request, &all);
        all.push(request);
        answer
    };
    let mut response = (StatusCode::from_u16(answer.status).unwrap(), answer.body).into_response();
    for (k, v) in answer.headers {
        response.headers_mut().insert(k, v.parse().unwrap());
    }
    response
}
