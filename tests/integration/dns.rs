//! A tiny authoritative DNS responder on 127.0.0.1 (UDP, hickory-proto's wire format)
//! for the DNS TXT ownership proof and the addresses site verification resolves: tests
//! publish records on it and point the controller's `dns_nameserver` at it. Names it has
//! no record for are NXDOMAIN.
//!
//! A records can be a sequence: each A query gets the next answer (the last repeats),
//! as a DNS-rebinding attacker's nameserver answers a public address first and an
//! internal one after.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, TXT};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

pub struct DnsResponder {
    pub addr: SocketAddr,
    records: Arc<Mutex<HashMap<String, Vec<String>>>>,
    addresses: Arc<Mutex<HashMap<String, Sequence>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The A answers of one name, in order, and how many A queries it has had.
#[derive(Default)]
struct Sequence {
    answers: Vec<Ipv4Addr>,
    asked: usize,
}

impl Sequence {
    /// The answer to the next query.
    fn next(&mut self) -> Option<Ipv4Addr> {
        let answer = self
            .answers
            .get(self.asked.min(self.answers.len().saturating_sub(1)))
            .copied();
        self.asked += 1;
        answer
    }
}

fn key(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.').to_ascii_lowercase())
}

impl DnsResponder {
    pub async fn start() -> DnsResponder {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let records: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
        let addresses: Arc<Mutex<HashMap<String, Sequence>>> = Arc::default();
        let served = records.clone();
        let served_addresses = addresses.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(request) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut response = Message::new();
                response
                    .set_id(request.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(request.op_code())
                    .set_authoritative(true)
                    .set_recursion_desired(request.recursion_desired())
                    .set_recursion_available(true);
                let mut found = false;
                for q in request.queries() {
                    response.add_query(q.clone());
                    let values = served
                        .lock()
                        .unwrap()
                        .get(&key(&q.name().to_ascii()))
                        .cloned();
                    let name = key(&q.name().to_ascii());
                    let mut sequences = served_addresses.lock().unwrap();
                    if let Some(sequence) = sequences.get_mut(&name) {
                        found = true;
                        // AAAA and others: no record of that type (NOERROR, no answer).
                        if q.query_type() == RecordType::A {
                            if let Some(ip) = sequence.next() {
                                response.add_answer(Record::from_rdata(
                                    q.name().clone(),
                                    0,
                                    RData::A(A(ip)),
                                ));
                            }
                        }
                    }
                    drop(sequences);
                    if let Some(values) = values {
                        found = true;
                        if q.query_type() == RecordType::TXT {
                            for v in values {
                                response.add_answer(Record::from_rdata(
                                    q.name().clone(),
                                    60,
                                    RData::TXT(TXT::new(vec![v])),
                                ));
                            }
                        }
                    }
                }
                if !found {
                    response.set_response_code(ResponseCode::NXDomain);
                }
                if let Ok(bytes) = response.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        DnsResponder {
            addr,
            records,
            addresses,
            task,
        }
    }

    /// Publishes a TXT record `value` at `name`.
    pub fn publish_txt(&self, name: &str, value: &str) {
        self.records
            .lock()
            .unwrap()
            .entry(key(name))
            .or_default()
            .push(value.to_owned());
    }

    /// Answers A queries for `name` with `answers` in turn, one per query; the last
    /// answer repeats.
    pub fn publish_a_sequence(&self, name: &str, answers: &[Ipv4Addr]) {
        self.addresses.lock().unwrap().insert(
            key(name),
            Sequence {
                answers: answers.to_vec(),
                asked: 0,
            },
        );
    }

    /// How many A queries `name` has had.
    pub fn a_queries(&self, name: &str) -> usize {
        self.addresses
            .lock()
            .unwrap()
            .get(&key(name))
            .map_or(0, |s| s.asked)
    }
}

impl Drop for DnsResponder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
