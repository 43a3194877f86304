//! `redis://` and `rediss://` URLs with username and password, against a real TLS Redis.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// A CA and a server certificate for 127.0.0.1, made with the openssl command line.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("the TLS test needs the openssl command");
        assert!(status.success(), "openssl {args:?} failed");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    ]
    .iter()
    .chain(&["-keyout", "ca.key", "-out", "ca.pem"])
    .copied()
    .collect::<Vec<_>>());
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
}

#[test]
fn rediss_with_username_and_password() {
    let certificates = tempfile::tempdir().unwrap();
    make_certificates(certificates.path());
    let tls_port = logsentinel::local_redis::free_loopback_port().unwrap().to_string();
    let path = |name: &str| certificates.path().join(name).to_str().unwrap().to_string();
    let (cert, key, ca) = (path("server.pem"), path("server.key"), path("ca.pem"));
    let redis = TestRedis::start(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
        "--user",
        "alice",
        "on",
        ">wonderland",
        "~*",
        "&*",
        "+@all",
    ]);

    let url = format!("rediss://alice:wonderland@127.0.0.1:{tls_port}");
    let agent = logsentinel(&url)
        .args(["agent", "--count", "100", "--rate", "0", "--summary-json"])
        .env("SSL_CERT_FILE", &ca)
        .output()
        .unwrap();
    assert!(agent.status.success(), "{}", String::from_utf8_lossy(&agent.stderr));
    let mut connection = redis.connection();
    let length: u64 = redis::cmd("XLEN")
        .arg("logsentinel:logs")
        .query(&mut connection)
        .unwrap();
    assert_eq!(length, 100, "the agent wrote over TLS as alice");

    let status = logsentinel(&url)
        .args(["status", "--json"])
        .env("SSL_CERT_FILE", &ca)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));

    let wrong_password = format!("rediss://alice:queen@127.0.0.1:{tls_port}");
    let refused = logsentinel(&wrong_password)
        .arg("status")
        .env("SSL_CERT_FILE", &ca)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach Redis at rediss://alice:***@127.0.0.1"),
        "{stderr}"
    );
    assert!(!stderr.contains("queen"), "the password is not printed: {stderr}");
}
