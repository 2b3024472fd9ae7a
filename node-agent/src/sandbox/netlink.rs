//! Just enough rtnetlink for desktop networking, spoken directly over a
//! `NETLINK_ROUTE` socket (no `ip` processes): create a bridge and veth
//! pairs, enslave and isolate bridge ports, bring links up, add addresses
//! and a default route, delete links.
//!
//! A socket works in the network namespace it was opened in, so the
//! network code opens one on the host and one inside each new namespace.
//! Every request asks for an acknowledgement and returns the kernel's
//! error as an `io::Error`.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_PROTINFO: u16 = 12;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_BRPORT_ISOLATED: u16 = 33;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;

const IFF_UP: u32 = 1;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;

/// Longest interface name the kernel takes (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// A message under construction: the netlink header is filled in by
/// [`Netlink::request`].
#[derive(Default)]
struct Message {
    bytes: Vec<u8>,
    /// Offsets of nested attributes still open.
    nests: Vec<usize>,
}

impl Message {
    fn raw(&mut self, data: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(data);
        self
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        self.pad();
        let length = (4 + value.len()) as u16;
        self.bytes.extend_from_slice(&length.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        self.pad();
        self
    }

    fn attr_str(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes)
    }

    fn begin(&mut self, kind: u16) -> &mut Self {
        self.pad();
        self.nests.push(self.bytes.len());
        self.bytes.extend_from_slice(&0u16.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self
    }

    fn end(&mut self) -> &mut Self {
        let start = self.nests.pop().expect("end without begin");
        let length = (self.bytes.len() - start) as u16;
        self.bytes[start..start + 2].copy_from_slice(&length.to_ne_bytes());
        self
    }
}

/// `struct ifinfomsg`.
fn ifinfo(family: u8, index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[0] = family;
    bytes[4..8].copy_from_slice(&index.to_ne_bytes());
    bytes[8..12].copy_from_slice(&flags.to_ne_bytes());
    bytes[12..16].copy_from_slice(&change.to_ne_bytes());
    bytes
}

/// An rtnetlink socket bound to the network namespace it was opened in.
pub struct Netlink {
    fd: OwnedFd,
    sequence: u32,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: socket(2) with constant arguments; the result is checked
        // and owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl is a valid "kernel assigns the port"
        // address; the length matches the struct.
        let bound = unsafe {
            let mut address: libc::sockaddr_nl = std::mem::zeroed();
            address.nl_family = libc::AF_NETLINK as u16;
            libc::bind(
                fd.as_raw_fd(),
                (&address as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink { fd, sequence: 0 })
    }

    /// Sends one request and waits for its acknowledgement; returns the
    /// first reply that is not the acknowledgement (for GET requests).
    fn request(&mut self, kind: u16, flags: u16, body: &Message) -> io::Result<Vec<u8>> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let length = (16 + body.bytes.len()) as u32;
        let mut packet = Vec::with_capacity(length as usize);
        packet.extend_from_slice(&length.to_ne_bytes());
        packet.extend_from_slice(&kind.to_ne_bytes());
        packet.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        packet.extend_from_slice(&sequence.to_ne_bytes());
        packet.extend_from_slice(&0u32.to_ne_bytes());
        packet.extend_from_slice(&body.bytes);
        // SAFETY: send(2) from a live buffer of the given length.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = Vec::new();
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: recv(2) into a live buffer of its length.
            let received = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if received < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            let mut rest = &buffer[..received as usize];
            while rest.len() >= 16 {
                let length = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
                let seq = u32::from_ne_bytes(rest[8..12].try_into().unwrap());
                if length < 16 || length > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed netlink reply",
                    ));
                }
                let payload = &rest[16..length];
                if seq == sequence {
                    match kind {
                        NLMSG_ERROR => {
                            let code = payload
                                .get(0..4)
                                .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                                .unwrap_or(-libc::EIO);
                            return if code == 0 {
                                Ok(reply)
                            } else {
                                Err(io::Error::from_raw_os_error(-code))
                            };
                        }
                        NLMSG_DONE => return Ok(reply),
                        _ if reply.is_empty() => reply = payload.to_vec(),
                        _ => {}
                    }
                }
                rest = &rest[(length + 3) & !3..];
                if rest.len() < 16 {
                    break;
                }
            }
        }
    }

    /// The index of the link called `name`.
    pub fn index(&mut self, name: &str) -> io::Result<i32> {
        let mut message = Message::default();
        message
            .raw(&ifinfo(libc::AF_UNSPEC as u8, 0, 0, 0))
            .attr_str(IFLA_IFNAME, name);
        let reply = self.request(RTM_GETLINK, 0, &message)?;
        reply
            .get(4..8)
            .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no link {name}")))
    }

    /// Creates a bridge; `Ok(false)` when it exists already.
    pub fn create_bridge(&mut self, name: &str) -> io::Result<bool> {
        let mut message = Message::default();
        message
            .raw(&ifinfo(libc::AF_UNSPEC as u8, 0, 0, 0))
            .attr_str(IFLA_IFNAME, name)
            .begin(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "bridge")
            .end();
        match self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &message) {
            Ok(_) => Ok(true),
            Err(error) if error.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Creates a veth pair: `name` here, `peer` in the network namespace
    /// `peer_netns`.
    pub fn create_veth(&mut self, name: &str, peer: &str, peer_netns: RawFd) -> io::Result<()> {
        let mut message = Message::default();
        message
            .raw(&ifinfo(libc::AF_UNSPEC as u8, 0, 0, 0))
            .attr_str(IFLA_IFNAME, name)
            .begin(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "veth")
            .begin(IFLA_INFO_DATA)
            .begin(VETH_INFO_PEER)
            .raw(&ifinfo(libc::AF_UNSPEC as u8, 0, 0, 0))
            .attr_str(IFLA_IFNAME, peer)
            .attr(IFLA_NET_NS_FD, &(peer_netns as u32).to_ne_bytes())
            .end()
            .end()
            .end();
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &message)
            .map(drop)
    }

    /// Brings link `index` up.
    pub fn set_up(&mut self, index: i32) -> io::Result<()> {
        let mut message = Message::default();
        message.raw(&ifinfo(libc::AF_UNSPEC as u8, index, IFF_UP, IFF_UP));
        self.request(RTM_NEWLINK, 0, &message).map(drop)
    }

    /// Makes link `index` a port of bridge `bridge`.
    pub fn set_master(&mut self, index: i32, bridge: i32) -> io::Result<()> {
        let mut message = Message::default();
        message
            .raw(&ifinfo(libc::AF_UNSPEC as u8, index, 0, 0))
            .attr(IFLA_MASTER, &(bridge as u32).to_ne_bytes());
        self.request(RTM_NEWLINK, 0, &message).map(drop)
    }

    /// Marks bridge port `index` isolated: it cannot exchange frames with
    /// any other isolated port, only with the bridge itself.
    pub fn isolate_port(&mut self, index: i32) -> io::Result<()> {
        let mut message = Message::default();
        message
            .raw(&ifinfo(libc::AF_BRIDGE as u8, index, 0, 0))
            .begin(IFLA_PROTINFO | NLA_F_NESTED)
            .attr(IFLA_BRPORT_ISOLATED, &[1])
            .end();
        self.request(RTM_SETLINK, 0, &message).map(drop)
    }

    /// Adds `address/prefix` to link `index`; `Ok(false)` when present.
    pub fn add_address(&mut self, index: i32, address: Ipv4Addr, prefix: u8) -> io::Result<bool> {
        let mut header = [0u8; 8];
        header[0] = libc::AF_INET as u8;
        header[1] = prefix;
        header[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
        let mut message = Message::default();
        message
            .raw(&header)
            .attr(IFA_LOCAL, &address.octets())
            .attr(IFA_ADDRESS, &address.octets());
        match self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &message) {
            Ok(_) => Ok(true),
            Err(error) if error.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Adds the default route via `gateway`.
    pub fn add_default_route(&mut self, gateway: Ipv4Addr) -> io::Result<()> {
        let header = [
            libc::AF_INET as u8,
            0, // dst_len: default
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            0, // RT_SCOPE_UNIVERSE
            RTN_UNICAST,
            0,
            0,
            0,
            0,
        ];
        let mut message = Message::default();
        message.raw(&header).attr(RTA_GATEWAY, &gateway.octets());
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &message)
            .map(drop)
    }

    /// Deletes the link called `name`; `Ok(false)` when there is none.
    /// Deleting one end of a veth pair deletes both.
    pub fn delete(&mut self, name: &str) -> io::Result<bool> {
        let mut message = Message::default();
        message
            .raw(&ifinfo(libc::AF_UNSPEC as u8, 0, 0, 0))
            .attr_str(IFLA_IFNAME, name);
        match self.request(RTM_DELLINK, 0, &message) {
            Ok(_) => Ok(true),
            Err(error) if error.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Names of the links in this namespace that start with `prefix`.
    pub fn links_with_prefix(prefix: &str) -> Vec<String> {
        std::fs::read_dir("/sys/class/net")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(prefix))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_are_sized_and_padded() {
        let mut message = Message::default();
        message
            .begin(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "veth")
            .end();
        // outer header 4 + inner header 4 + "veth\0" padded to 8.
        assert_eq!(message.bytes.len(), 16);
        assert_eq!(u16::from_ne_bytes([message.bytes[0], message.bytes[1]]), 16);
        assert_eq!(u16::from_ne_bytes([message.bytes[4], message.bytes[5]]), 9);
        assert_eq!(&message.bytes[8..13], b"veth\0");
    }
}
