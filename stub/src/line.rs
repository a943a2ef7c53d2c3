//! A one-line message assembled in a fixed buffer (no allocation) and written to stderr.
use crate::sys;

pub struct Line {
    buf: [u8; 400],
    len: usize,
}

impl Line {
    pub fn new() -> Line {
        Line {
            buf: [0; 400],
            len: 0,
        }
    }

    /// Appends bytes; what does not fit is dropped.
    pub fn push(&mut self, s: &[u8]) -> &mut Line {
        for &b in s {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        self
    }

    /// Appends `v` in decimal.
    pub fn push_u64(&mut self, mut v: u64) -> &mut Line {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..])
    }

    /// Appends `v` as `0x` and lowercase hexadecimal digits.
    pub fn push_hex(&mut self, v: u64) -> &mut Line {
        let mut digits = [0u8; 16];
        let mut i = digits.len();
        let mut v = v;
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[(v & 0xf) as usize];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        self.push(b"0x").push(&digits[i..])
    }

    /// Writes the line, with a newline, to stderr.
    pub fn emit(&mut self) {
        self.push(b"\n");
        sys::write(2, &self.buf[..self.len]);
    }
}
