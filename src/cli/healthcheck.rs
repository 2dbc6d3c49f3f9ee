//! `skywave healthcheck`: exits 0 when the local public listener answers
//! `/healthz` (for container health checks).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use skywave::config::Config;

use super::discovery::Discovery;
use super::print;

/// A dependency-free HTTP/1.0 GET, so container images need no curl.
pub fn healthcheck(discovery: &Discovery, url: Option<String>) -> ExitCode {
    use std::io::Read;
    let url = url.unwrap_or_else(|| {
        // Only the port matters here: a secret is not needed to ask.
        let port = Config::load(discovery.path(), &|name| std::env::var(name).ok(), true)
            .map(|l| l.config.ws_port)
            .unwrap_or(9000);
        format!("http://127.0.0.1:{port}/healthz")
    });
    let Some(rest) = url.strip_prefix("http://") else {
        eprintln!("healthcheck: only http:// URLs are supported");
        return ExitCode::from(2);
    };
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let result = (|| -> std::io::Result<String> {
        use std::net::ToSocketAddrs;
        let addr = host
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
        let mut response = String::new();
        stream.take(4096).read_to_string(&mut response)?;
        Ok(response)
    })();
    match result {
        Ok(response)
            if response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200") =>
        {
            print("healthy");
            ExitCode::SUCCESS
        }
        Ok(response) => {
            eprintln!("unhealthy: {}", response.lines().next().unwrap_or(""));
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("unhealthy: {url}: {error}");
            ExitCode::FAILURE
        }
    }
}
