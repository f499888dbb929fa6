//! Helpers shared by the unit tests and the criterion benches (public so
//! that `benches/` can reach it; not part of the server's API).

/// A masked client frame whose first byte (FIN, RSV bits, opcode) is
/// `first`, with the masking key of RFC 6455 §5.7's example, as a browser
/// would send it: 7-, 16- or 64-bit length as the payload needs.
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    f
}
