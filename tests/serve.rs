//! `sknet serve` on an ephemeral loopback port: every endpoint, the bad requests, 64 concurrent
//! clients answered as `sknet predict` answers, a full queue, a deadline, and a graceful stop.
#![cfg(feature = "serve")]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const WEIGHTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/cifar10.safetensors");

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sknet"))
            .args(["serve", "--weights", WEIGHTS, "--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line: {line:?}"))
            .to_string();
        Self { child, url }
    }

    fn post(&self, query: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        let request = ureq::post(&format!("{}/v1/predict{query}", self.url))
            .set("Content-Type", content_type);
        answer(request.send_bytes(body))
    }

    fn get(&self, path: &str) -> (u16, String) {
        match ureq::get(&format!("{}{path}", self.url)).call() {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
            Err(e) => panic!("{path}: {e}"),
        }
    }

    fn terminate(&mut self) -> i32 {
        send_signal(self.child.id(), "TERM");
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal through kill(1).
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let (code, response) = match result {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(code, r)) => (code, r),
        Err(e) => panic!("transport: {e}"),
    };
    let text = response.into_string().unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (code, json)
}

fn images(n: usize) -> Vec<PathBuf> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/data/cifar10-mini");
    let mut classes: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    classes.sort();
    (0..n)
        .map(|i| classes[i % classes.len()].join(format!("{:04}.jpg", i / classes.len())))
        .collect()
}

/// What `sknet predict --json` says about these images.
fn predicted(paths: &[PathBuf], attention: bool) -> Vec<Value> {
    let mut args = vec!["predict".to_string(), "--weights".into(), WEIGHTS.into()];
    args.extend(["--json".into(), "--topk".into(), "3".into()]);
    if attention {
        args.push("--attention".into());
    }
    args.extend(paths.iter().map(|p| p.display().to_string()));
    let out = Command::new(env!("CARGO_BIN_EXE_sknet"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// The same classes in the same order, probabilities and attention weights within 1e-5 (a
/// batch of other images may round differently).
fn assert_same_prediction(got: &Value, want: &Value, tag: &str) {
    let (top, expected) = (
        got["top"].as_array().unwrap(),
        want["top"].as_array().unwrap(),
    );
    assert_eq!(top.len(), expected.len(), "{tag}: {got} vs {want}");
    for (a, b) in top.iter().zip(expected) {
        assert_eq!(a["index"], b["index"], "{tag}: {got} vs {want}");
        assert_eq!(a["label"], b["label"], "{tag}");
        let (p, q) = (
            a["probability"].as_f64().unwrap(),
            b["probability"].as_f64().unwrap(),
        );
        assert!((p - q).abs() < 1e-5, "{tag}: {p} vs {q}");
    }
    match (got["attention"].as_array(), want["attention"].as_array()) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            assert_eq!(a.len(), b.len(), "{tag}");
            for (x, y) in a.iter().zip(b) {
                assert_eq!(x["unit"], y["unit"], "{tag}");
                assert_eq!(x["kernel"], y["kernel"], "{tag}");
                let (p, q) = (x["weight"].as_f64().unwrap(), y["weight"].as_f64().unwrap());
                assert!((p - q).abs() < 1e-5, "{tag}: {p} vs {q}");
            }
        }
        _ => panic!("{tag}: attention in one answer only: {got} vs {want}"),
    }
}

fn multipart(name: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "sknet-test-boundary-7d1f";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n\
         Content-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[test]
fn endpoints_answer_as_predict_does_and_bad_requests_get_clear_errors() {
    let server = Server::start(&["--max-body-mb", "1"]);
    let (code, health) = server.get("/healthz");
    assert_eq!((code, health.as_str()), (200, r#"{"status":"ok"}"#));

    let (code, text) = server.get("/v1/model");
    assert_eq!(code, 200);
    let model: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(model["num_classes"], 10);
    assert_eq!(model["classes"][3], "cat");
    assert_eq!(model["preprocess"]["size"], serde_json::json!([32, 32]));
    let units = model["units"].as_array().unwrap();
    assert!(!units.is_empty() && units[0]["unit"] == "SK_2_1", "{model}");

    let paths = images(4);
    let want = predicted(&paths, true);
    for (path, want) in paths.iter().zip(&want) {
        let bytes = std::fs::read(path).unwrap();
        let (code, got) = server.post("?topk=3&attention=1", "image/jpeg", &bytes);
        assert_eq!(code, 200, "{got}");
        assert_eq!(got["path"], "body");
        assert_same_prediction(&got, want, "raw body");
        let (content_type, body) = multipart("cat.jpg", &bytes);
        let (code, got) = server.post("?topk=3&attention=true", &content_type, &body);
        assert_eq!(code, 200, "{got}");
        assert_eq!(got["path"], "cat.jpg");
        assert_same_prediction(&got, want, "multipart");
    }
    // Defaults: top-5, no attention.
    let (code, got) = server.post("", "image/jpeg", &std::fs::read(&paths[0]).unwrap());
    assert_eq!(code, 200);
    assert_eq!(got["top"].as_array().unwrap().len(), 5);
    assert!(got.get("attention").is_none(), "{got}");

    let bad: [(&str, &[u8], u16, &str); 5] = [
        ("", b"", 400, "empty"),
        ("", b"definitely not an image", 400, "not an image"),
        ("?topk=0", b"x", 400, "topk"),
        ("?topk=11", b"x", 400, "1..=10"),
        ("?colour=red", b"x", 400, "colour"),
    ];
    for (query, body, status, needle) in bad {
        let (code, got) = server.post(query, "application/octet-stream", body);
        assert_eq!(code, status, "{query}: {got}");
        let message = got["error"].as_str().unwrap();
        assert!(message.contains(needle), "{query}: {message}");
    }
    let (code, got) = server.post("", "image/jpeg", &vec![0u8; 1_500_000]);
    assert_eq!(code, 413, "{got}");
    let (content_type, body) = multipart("big.jpg", &vec![0u8; 1_500_000]);
    let (code, _) = server.post("", &content_type, &body);
    assert_eq!(code, 413);
    let (code, text) = server.get("/v1/predict");
    assert_eq!(code, 405, "{text}");
    assert!(text.contains("method not allowed"), "{text}");
    let (code, text) = server.get("/v2/nothing");
    assert_eq!(code, 404, "{text}");

    let (code, page) = server.get("/");
    assert_eq!(code, 200);
    assert!(page.contains("<html") && page.contains("app.js"), "{page}");
    let (code, metrics) = server.get("/metrics");
    assert_eq!(code, 200);
    for needle in [
        "sknet_http_requests_total{route=\"predict\",status=\"200\"} 9",
        "sknet_http_requests_total{route=\"predict\",status=\"413\"} 2",
        "sknet_http_request_duration_seconds_bucket",
        "sknet_batch_size_count 9",
        "sknet_queue_depth 0",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }
}

#[test]
fn sixty_four_concurrent_clients_each_get_their_own_answer() {
    let server = Server::start(&["--max-batch", "16", "--max-wait-ms", "20"]);
    let paths = images(16);
    let want = predicted(&paths, false);
    let url = server.url.clone();
    let clients: Vec<_> = (0..64)
        .map(|i| {
            let (bytes, url) = (std::fs::read(&paths[i % 16]).unwrap(), url.clone());
            std::thread::spawn(move || {
                let request = ureq::post(&format!("{url}/v1/predict?topk=3"));
                answer(request.send_bytes(&bytes))
            })
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let (code, got) = client.join().unwrap();
        assert_eq!(code, 200, "client {i}: {got}");
        assert_same_prediction(&got, &want[i % 16], &format!("client {i}"));
    }
    let (_, metrics) = server.get("/metrics");
    let batches: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sknet_batch_size_count "))
        .unwrap()
        .parse()
        .unwrap();
    // Concurrent requests share forward passes.
    assert!(batches < 64.0, "{batches} forward passes for 64 requests");
}

#[test]
fn a_full_queue_answers_503_and_a_missed_deadline_504() {
    // 512x512 crops make each forward pass long enough for the queue of one to fill.
    let server = Server::start(&["--input", "512", "--max-batch", "1", "--queue", "1"]);
    let bytes = std::fs::read(&images(1)[0]).unwrap();
    let url = server.url.clone();
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let (bytes, url) = (bytes.clone(), url.clone());
            std::thread::spawn(move || {
                match ureq::post(&format!("{url}/v1/predict")).send_bytes(&bytes) {
                    Ok(r) => (r.status(), None),
                    Err(ureq::Error::Status(code, r)) => {
                        (code, r.header("Retry-After").map(str::to_string))
                    }
                    Err(e) => panic!("{e}"),
                }
            })
        })
        .collect();
    let answers: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(answers.iter().any(|a| a.0 == 200), "{answers:?}");
    assert!(answers.contains(&(503, Some("1".into()))), "{answers:?}");
    assert!(
        answers.iter().all(|a| a.0 == 200 || a.0 == 503),
        "{answers:?}"
    );
    drop(server);

    let server = Server::start(&["--input", "512", "--timeout-ms", "1"]);
    let (code, got) = server.post("", "image/jpeg", &bytes);
    assert_eq!(code, 504, "{got}");
    assert!(got["error"].as_str().unwrap().contains("timeout"), "{got}");
}

#[test]
fn sigterm_answers_the_requests_in_flight_then_stops() {
    // Batches wait up to 1.5 s for company: the requests are in flight when SIGTERM comes.
    let mut server = Server::start(&["--max-wait-ms", "1500", "--max-batch", "64"]);
    let bytes = std::fs::read(&images(1)[0]).unwrap();
    let url = server.url.clone();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (bytes, url) = (bytes.clone(), url.clone());
            std::thread::spawn(move || {
                answer(ureq::post(&format!("{url}/v1/predict")).send_bytes(&bytes))
            })
        })
        .collect();
    // Wait until all four are queued.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, metrics) = server.get("/metrics");
        if metrics.contains("sknet_queue_depth 4") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "requests never queued:\n{metrics}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let code = server.terminate();
    for client in clients {
        let (status, got) = client.join().unwrap();
        assert_eq!(status, 200, "{got}");
    }
    assert_eq!(code, 0, "exit status after SIGTERM");
    // Nothing listens any more.
    assert!(ureq::get(&format!("{url}/healthz")).call().is_err());
}
