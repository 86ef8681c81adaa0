//! The test CA and the server's certificate, made with the openssl
//! command-line tool.

use super::{give_to_server, set_mode};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and a server certificate for `localhost`, made with the openssl
/// command-line tool; returns the CA certificate's path.
pub(super) fn make_certificates(dir: &Path) -> PathBuf {
    let run = |args: &[&str]| openssl(dir, args);
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=coax test CA"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca);
    let mut csr = vec!["req", "-subj", "/CN=localhost"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    run(&csr);
    sign_server(dir, "2", "server.pem");
    for name in ["server.key", "server.pem"] {
        let path = dir.join(name);
        set_mode(&path, 0o600);
        give_to_server(&path);
    }
    dir.join("ca.pem")
}

/// Runs the openssl command-line tool in `dir`, failing the test with its
/// words if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (the CLI makes the test CA): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Signs the server's request in `dir` with the test CA, valid for `days`
/// (`"-1"` makes one that has expired), into `out`.
pub fn sign_server(dir: &Path, days: &str, out: &str) {
    openssl(
        dir,
        &[
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
            days,
            "-extfile",
            "server.ext",
            "-out",
            out,
        ],
    );
}
