//! The `lastmile-reflector` binary as a site owner runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lastmile_protocol::reflector::{self, Packet};

const TOKEN_VAR: &str = "LASTMILE_REFLECTOR_TOKEN";

fn reflector_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lastmile-reflector"));
    // Only what a test gives it: not a token the machine running the tests may have set.
    command.env_remove(TOKEN_VAR);
    command
}

/// A running reflector, killed when dropped (also when a test fails half-way).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A UDP port free a moment ago on 127.0.0.1 (the binary's own port cannot be learned
/// from outside when it is given port 0).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the reflector on a free port with `args` and `env`, and waits (at most 5 s)
/// until it answers a hello; returns the token it answered with.
fn start_and_hello(args: &[&str], env: &[(&str, &str)]) -> (Running, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = reflector_command()
        .args(["--listen", &listen])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = Running(child);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // Until the binary has bound its socket the hello is refused or lost; retry.
        let _ = sock.send_to(&reflector::hello(7), &listen);
        let Ok(n) = sock.recv(&mut buf) else {
            continue;
        };
        if let Ok(Packet::Welcome {
            session: 7, token, ..
        }) = reflector::decode(&buf[..n])
        {
            return (running, token.to_owned());
        }
    }
    panic!("no welcome from the reflector on {listen} within 5 s");
}

#[test]
fn answers_a_hello_with_the_token_given_on_the_command_line() {
    let (_running, token) = start_and_hello(&["--token", "lms_test"], &[]);
    assert_eq!(token, "lms_test");
}

#[test]
fn reads_the_token_from_the_environment() {
    let (_running, token) = start_and_hello(&[], &[(TOKEN_VAR, "lms_from_env")]);
    assert_eq!(token, "lms_from_env");
}

#[test]
fn refuses_to_start_without_a_token() {
    let output = reflector_command()
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--token"), "{stderr}");

    let output = reflector_command()
        .args(["--listen", "127.0.0.1:0", "--token", ""])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("token is empty"), "{stderr}");
}

#[test]
fn help_says_what_it_is_for() {
    let output = reflector_command().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("Answers Lastmile udp checks"), "{help}");
    assert!(help.contains("verification token"), "{help}");
    assert!(help.contains(TOKEN_VAR), "{help}");
}
