//! Hand-built Ethernet frames, injected with AF_PACKET so that they pass through TC egress
//! carrying in-band 802.1Q / 802.1ad tags (this machine's kernel has no VLAN devices).

use std::net::Ipv4Addr;

use anyhow::{bail, Result};

pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

/// An Ethernet frame carrying an IPv4/UDP datagram from `src` to `dst`, with the given tags
/// (outermost first: `(tpid, vlan id)`).
pub fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    tags: &[(u16, u16)],
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let payload = b"eniguard";
    let total_len = 20 + 8 + payload.len() as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&4789u16.to_be_bytes());
    f.extend_from_slice(&4789u16.to_be_bytes());
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed for IPv4)
    f.extend_from_slice(payload);
    f
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 =
        bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet/IPv4 ARP reply announcing `sender` (the address the guard checks).
pub fn arp_frame(dst_mac: [u8; 6], src_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]); // Ethernet, IPv4, reply
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&target.octets());
    f
}

/// An Ethernet frame carrying a minimal IPv6 header (no payload) from `src` to `dst`.
pub fn ipv6_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(54);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 0, 59, 64]); // version 6, no next header, hop limit 64
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f
}

/// `frame` padded with zeros to `len` bytes (after its own payload; IPv4 length fields are not
/// changed, so receivers see trailing padding).
pub fn padded(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.resize(len.max(frame.len()), 0);
    frame
}

/// Sends `frame` `count` times out of `iface` in the calling thread's network namespace.
pub fn inject(iface: &str, frame: &[u8], count: usize) -> Result<()> {
    send(iface, frame, count, false)
}

/// Like [`inject`], but the skb carries only the Ethernet header in its linear area and the rest
/// in page fragments (AF_PACKET with a virtio-net header whose `hdr_len` is 14; the kernel does
/// this for frames of a page or more), as GRO and some drivers deliver them: a program that reads
/// headers only through direct packet access cannot see the IP header of such a frame.
pub fn inject_nonlinear(iface: &str, frame: &[u8], count: usize) -> Result<()> {
    if frame.len() < 4096 {
        bail!("a frame of {} bytes is made linear by the kernel; pad it to 4096 or more", frame.len());
    }
    send(iface, frame, count, true)
}

fn send(iface: &str, frame: &[u8], count: usize, nonlinear: bool) -> Result<()> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: plain syscalls on values we own; the fd is closed below.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            bail!("no interface {iface}");
        }
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let mut buf = Vec::with_capacity(frame.len() + 10);
        if nonlinear {
            let one: libc::c_int = 1;
            let ok = libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_VNET_HDR,
                (&one as *const libc::c_int).cast(),
                4,
            );
            if ok != 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                bail!("PACKET_VNET_HDR: {e}");
            }
            // struct virtio_net_hdr: flags, gso_type (none), hdr_len = 14 (little endian), the rest 0.
            buf.extend_from_slice(&[0, 0, 14, 0, 0, 0, 0, 0, 0, 0]);
        }
        buf.extend_from_slice(frame);
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        for _ in 0..count {
            let sent = libc::sendto(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if sent < 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                bail!("sendto on {iface}: {e}");
            }
        }
        libc::close(fd);
    }
    Ok(())
}

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = s.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>()?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("bad MAC {s}"))
}
