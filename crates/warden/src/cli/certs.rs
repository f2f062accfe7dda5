//! `warden certs DIR`: a throwaway certificate authority and the
//! certificates to try TLS with (what `warden dev --tls` uses), made with
//! rcgen so nothing outside warden is needed. Not for production: the CA
//! key is thrown away, so these certificates can never be renewed; make
//! real ones as docs/security.md shows.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Flags of `warden certs`.
#[derive(Args, Debug)]
pub struct CertsArgs {
    /// Directory to write ca.pem, server.pem, server-key.pem, client.pem
    /// and client-key.pem to (created if missing).
    pub dir: PathBuf,
    /// Names and addresses the server certificate is valid for.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
    pub hosts: Vec<String>,
}

/// The files `write_certs` makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn params(cn: &str, sans: &[String]) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(sans.to_vec()).context("certificate names")?;
    p.distinguished_name.push(DnType::CommonName, cn);
    Ok(p)
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// Makes a CA, a server certificate for `hosts` (also good as a client
/// certificate, as members present it to each other) and a client
/// certificate, in `dir`.
pub fn write_certs(dir: &Path, hosts: &[String]) -> anyhow::Result<CertFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ca = params("warden throwaway CA", &[])?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().context("CA key")?;
    let ca_cert = ca.self_signed(&ca_key).context("CA certificate")?;
    let issuer = Issuer::new(ca, ca_key);

    let mut server = params("warden member", hosts)?;
    server.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let server_key = KeyPair::generate().context("server key")?;
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .context("server certificate")?;

    let mut client = params("warden client", &[])?;
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().context("client key")?;
    let client_cert = client
        .signed_by(&client_key, &issuer)
        .context("client certificate")?;

    let files = CertFiles {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
    };
    let write = |p: &Path, text: String| {
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))
    };
    write(&files.ca, ca_cert.pem())?;
    write(&files.server_cert, server_cert.pem())?;
    write_private(&files.server_key, &server_key.serialize_pem())?;
    write(&files.client_cert, client_cert.pem())?;
    write_private(&files.client_key, &client_key.serialize_pem())?;
    Ok(files)
}

/// Runs `warden certs`.
pub fn run_certs(args: CertsArgs) -> anyhow::Result<()> {
    let f = write_certs(&args.dir, &args.hosts)?;
    println!("CA:                 {}", f.ca.display());
    println!(
        "server (and peer):  {} {}",
        f.server_cert.display(),
        f.server_key.display()
    );
    println!(
        "client:             {} {}",
        f.client_cert.display(),
        f.client_key.display()
    );
    Ok(())
}
