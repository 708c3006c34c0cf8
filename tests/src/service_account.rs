//! A service-account key file for testing the real credential path: an RSA key made
//! with `openssl` (PKCS#8, as Google issues them) in a directory of the test's, and a
//! `token_uri` pointing at a token endpoint such as gce-sim's `POST /token`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The email the generated key file names.
pub const CLIENT_EMAIL: &str = "pm-agent@pm-test.iam.gserviceaccount.com";

/// Writes `dir/service-account.json`, a key file of type `service_account` whose
/// `token_uri` is `token_uri`, and returns its path.
pub fn generate(dir: &Path, token_uri: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("key dir");
    let key_path = dir.join("service-account-key.pem");
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key_path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (apt-get install openssl): {e}"));
    assert!(
        out.status.success(),
        "openssl genpkey failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let private_key = std::fs::read_to_string(&key_path).expect("read key");
    assert!(
        private_key.starts_with("-----BEGIN PRIVATE KEY-----"),
        "openssl wrote no PKCS#8 key"
    );
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": crate::cluster::PROJECT,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": private_key,
        "client_email": CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
    });
    let path = dir.join("service-account.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&key).expect("json")).expect("write key file");
    path
}
