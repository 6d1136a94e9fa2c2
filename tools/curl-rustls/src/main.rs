//! `curl-rustls URL [--connect-to HOST:PORT:ADDR:PORT] [--cacert FILE]`: fetches URL twice
//! with libcurl (built on rustls), each time on a fresh connection with no TLS session
//! resumption, and prints per transfer the same figures as `curl -w` with
//! `%{time_namelookup} %{time_connect} %{time_appconnect} %{time_pretransfer}
//! %{time_starttransfer} %{time_total} %{http_code} %{num_connects}`, one line each.
//! The fidelity bench reads the second line, as it does for the curl command line.

use std::process::ExitCode;

use curl::easy::{Easy2, Handler, HttpVersion, List, WriteError};

/// Discards the body: only the timings matter.
struct Discard;

impl Handler for Discard {
    fn write(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        Ok(data.len())
    }
}

struct Args {
    url: String,
    connect_to: Option<String>,
    cacert: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut url, mut connect_to, mut cacert) = (None, None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--connect-to" => connect_to = Some(args.next().ok_or("--connect-to needs a value")?),
            "--cacert" => cacert = Some(args.next().ok_or("--cacert needs a file")?),
            _ if url.is_none() => url = Some(arg),
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    Ok(Args {
        url: url.ok_or("usage: curl-rustls URL [--connect-to H:P:A:P] [--cacert FILE]")?,
        connect_to,
        cacert,
    })
}

fn transfer(args: &Args) -> Result<String, curl::Error> {
    let mut easy = Easy2::new(Discard);
    easy.url(&args.url)?;
    easy.http_version(HttpVersion::V11)?;
    easy.fresh_connect(true)?;
    easy.forbid_reuse(true)?;
    easy.ssl_sessionid_cache(false)?;
    if let Some(c) = &args.connect_to {
        let mut list = List::new();
        list.append(c)?;
        easy.connect_to(list)?;
    }
    if let Some(ca) = &args.cacert {
        easy.cainfo(ca)?;
    }
    easy.perform()?;
    let s = |d: std::time::Duration| d.as_secs_f64();
    Ok(format!(
        "{:.6} {:.6} {:.6} {:.6} {:.6} {:.6} {} {}",
        s(easy.namelookup_time()?),
        s(easy.connect_time()?),
        s(easy.appconnect_time()?),
        s(easy.pretransfer_time()?),
        s(easy.starttransfer_time()?),
        s(easy.total_time()?),
        easy.response_code()?,
        easy.num_connects()?,
    ))
}

fn main() -> ExitCode {
    // libcurl's rustls backend takes rustls' process-wide default crypto provider. Make it
    // the agent's (rustls on ring): the default here, aws-lc-rs, would add a post-quantum
    // X25519MLKEM768 key share (a 1.5 KB ClientHello instead of 250 bytes), which costs
    // upstream time on a slow line and would make the handshakes differ in bytes, not
    // only in how they are timed.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("curl-rustls: a crypto provider was installed already");
        return ExitCode::FAILURE;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("curl-rustls: {e}");
            return ExitCode::from(2);
        }
    };
    for _ in 0..2 {
        match transfer(&args) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("curl-rustls: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
