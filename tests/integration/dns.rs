//! A tiny authoritative DNS responder on 127.0.0.1 (UDP, hickory-proto's wire format)
//! for the DNS TXT ownership proof: tests publish records on it and point the
//! controller's `dns_nameserver` at it. Names it has no record for are NXDOMAIN.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

pub struct DnsResponder {
    pub addr: SocketAddr,
    records: Arc<Mutex<HashMap<String, Vec<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

fn key(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.').to_ascii_lowercase())
}

impl DnsResponder {
    pub async fn start() -> DnsResponder {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let records: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
        let served = records.clone();
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
}

impl Drop for DnsResponder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
