//! clef-agent patch: a buffered reader that wipes every byte it hands out. `std::io::BufReader`
//! kept the last bytes it read — a request head with its bearer token — in its buffer for the
//! connection's whole life. Here the bytes a caller consumes are zeroed at once, so no request
//! outlives its parsing in the connection's buffer.

use std::io::{BufRead, Read, Result as IoResult};

pub struct WipingBufReader<R> {
    inner: R,
    buffer: Box<[u8]>,
    /// `buffer[start..end]` is read from `inner` and not yet consumed; the rest is zero.
    start: usize,
    end: usize,
}

impl<R: Read> WipingBufReader<R> {
    pub fn with_capacity(capacity: usize, inner: R) -> WipingBufReader<R> {
        WipingBufReader {
            inner,
            buffer: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// What has been read and not consumed yet; empty when the next read reaches the socket.
    pub fn buffer(&self) -> &[u8] {
        &self.buffer[self.start..self.end]
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

impl<R: Read> Read for WipingBufReader<R> {
    fn read(&mut self, out: &mut [u8]) -> IoResult<usize> {
        let available = self.fill_buf()?;
        let count = available.len().min(out.len());
        out[..count].copy_from_slice(&available[..count]);
        self.consume(count);
        Ok(count)
    }
}

impl<R: Read> BufRead for WipingBufReader<R> {
    fn fill_buf(&mut self) -> IoResult<&[u8]> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.end = self.inner.read(&mut self.buffer)?;
        }
        Ok(&self.buffer[self.start..self.end])
    }

    fn consume(&mut self, amount: usize) {
        let amount = amount.min(self.end - self.start);
        self.buffer[self.start..self.start + amount].fill(0);
        self.start += amount;
    }
}

impl<R> Drop for WipingBufReader<R> {
    fn drop(&mut self) {
        self.buffer.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::WipingBufReader;
    use std::io::{BufRead, Read};

    #[test]
    fn consumed_bytes_are_zeroed_and_the_rest_is_kept() {
        let mut reader = WipingBufReader::with_capacity(16, &b"GET / HTTP/1.1\r\nrest"[..]);
        assert_eq!(reader.fill_buf().unwrap(), b"GET / HTTP/1.1\r\n");
        reader.consume(6);
        assert_eq!(reader.buffer(), b"HTTP/1.1\r\n");
        assert_eq!(&reader.buffer[..6], &[0; 6]);
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"HTTP/1.1\r\nrest");
        assert!(reader.buffer.iter().all(|&byte| byte == 0), "{:?}", reader.buffer);
    }
}
