//! A DNS query helper on hickory's wire codec: UDP or TCP, with or without EDNS and ECS.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How to ask.
#[derive(Clone, Debug)]
pub struct Ask {
    pub name: String,
    pub qtype: RecordType,
    pub tcp: bool,
    /// EDNS payload size to advertise; `None` sends no OPT record.
    pub edns: Option<u16>,
    /// ECS: address (sent as given, so bad ones can be sent) and source prefix.
    pub ecs: Option<(IpAddr, u8)>,
    pub op_code: OpCode,
}

impl Ask {
    pub fn new(name: &str, qtype: RecordType) -> Ask {
        Ask {
            name: name.into(),
            qtype,
            tcp: false,
            edns: Some(1232),
            ecs: None,
            op_code: OpCode::Query,
        }
    }
    pub fn ecs(mut self, subnet: &str) -> Ask {
        let (ip, prefix) = subnet.split_once('/').unwrap();
        self.ecs = Some((ip.parse().unwrap(), prefix.parse().unwrap()));
        self
    }
    pub fn tcp(mut self) -> Ask {
        self.tcp = true;
        self
    }
    pub fn no_edns(mut self) -> Ask {
        self.edns = None;
        self
    }

    pub fn message(&self) -> Message {
        let mut m = Message::query();
        m.metadata.id = rand_id();
        m.metadata.op_code = self.op_code;
        m.metadata.message_type = MessageType::Query;
        m.metadata.recursion_desired = false;
        m.add_query(Query::query(
            Name::from_ascii(&self.name).unwrap(),
            self.qtype,
        ));
        if let Some(size) = self.edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            if let Some((ip, prefix)) = self.ecs {
                e.options_mut()
                    .insert(EdnsOption::Subnet(ClientSubnet::new(ip, prefix, 0)));
            }
            m.set_edns(e);
        }
        m
    }
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0x1234);
    NEXT.fetch_add(7919, Ordering::Relaxed)
}

/// Sends raw bytes and returns the raw answer.
pub async fn exchange(server: SocketAddr, bytes: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let fut = async {
        if tcp {
            let mut s = tokio::net::TcpStream::connect(server).await.ok()?;
            let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(bytes);
            s.write_all(&framed).await.ok()?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await.ok()?;
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut buf).await.ok()?;
            Some(buf)
        } else {
            let bind = match (server.is_ipv4(), server.ip().is_loopback()) {
                (true, true) => "127.0.0.1:0",
                (true, false) => "0.0.0.0:0",
                (false, true) => "[::1]:0",
                (false, false) => "[::]:0",
            };
            let s = tokio::net::UdpSocket::bind(bind).await.ok()?;
            s.send_to(bytes, server).await.ok()?;
            let mut buf = vec![0u8; 65535];
            let (n, _) = s.recv_from(&mut buf).await.ok()?;
            buf.truncate(n);
            Some(buf)
        }
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

/// Asks and decodes the answer.
pub async fn ask(server: SocketAddr, q: &Ask) -> Message {
    let bytes = q.message().to_vec().unwrap();
    let raw = exchange(server, &bytes, q.tcp)
        .await
        .expect("no DNS answer");
    Message::from_vec(&raw).expect("undecodable DNS answer")
}

/// The A/AAAA addresses of an answer.
pub fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// The echoed ECS option: (address, source prefix, scope prefix).
pub fn ecs_of(m: &Message) -> Option<(IpAddr, u8, u8)> {
    let edns = m.edns.as_ref()?;
    match edns.option(hickory_proto::rr::rdata::opt::EdnsCode::Subnet)? {
        EdnsOption::Subnet(cs) => Some((cs.addr(), cs.source_prefix(), cs.scope_prefix())),
        _ => None,
    }
}
