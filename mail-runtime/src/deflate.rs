//! IMAP COMPRESS=DEFLATE (RFC 4978): a connection whose bytes, both ways, are one raw DEFLATE
//! stream (RFC 1951, no zlib header) each. What the session writes is compressed as it comes and
//! pushed out with a sync flush at every `flush`, so a client never waits for a response stuck
//! in the compressor; what the client sends is inflated at most one read buffer at a time, so a
//! small input that inflates to gigabytes (a deflate bomb) is read no faster than the session's
//! own bounds (line length, literal size) allow.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::net::Conn;

/// Compressed bytes read from the client at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Compressed output kept before `poll_write` waits for the client to take some.
const WRITE_BACKLOG: usize = 64 * 1024;

/// A connection with DEFLATE on both directions.
pub struct Deflate {
    inner: Conn,
    compress: Compress,
    decompress: Decompress,
    /// Compressed bytes from the client not yet inflated: `input[start..end]`.
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// The client closed its side.
    eof: bool,
    /// Compressed bytes for the client not yet written.
    output: Vec<u8>,
    /// Written since the last flush: a flush with nothing new sends no empty block.
    dirty: bool,
}

impl std::fmt::Debug for Deflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflate")
            .field("pending_input", &(self.end - self.start))
            .field("pending_output", &self.output.len())
            .finish()
    }
}

impl Deflate {
    /// Starts DEFLATE on a connection (after the tagged OK of COMPRESS went out uncompressed).
    pub fn new(inner: Conn) -> Self {
        Self {
            inner,
            compress: Compress::new(Compression::default(), false),
            decompress: Decompress::new(false),
            input: vec![0; READ_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            output: Vec::new(),
            dirty: false,
        }
    }

    /// Writes what is in `output` to the client; `Ready` once it is all out.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut written = 0;
        while written < self.output.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.output[written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {
                    self.output.drain(..written);
                    return Poll::Pending;
                }
            }
        }
        self.output.clear();
        Poll::Ready(Ok(()))
    }

    /// Runs the compressor over `data` with `flush`, appending to `output`; returns the bytes
    /// of `data` taken.
    fn deflate(&mut self, data: &[u8], flush: FlushCompress) -> io::Result<usize> {
        let mut taken = 0;
        loop {
            self.output.reserve(8 * 1024);
            let (before_in, before_out) = (self.compress.total_in(), self.compress.total_out());
            self.compress
                .compress_vec(&data[taken..], &mut self.output, flush)
                .map_err(io::Error::other)?;
            taken += (self.compress.total_in() - before_in) as usize;
            let produced = self.compress.total_out() - before_out;
            // Done when everything is in and a flush left room to spare (nothing held back).
            let spare = self.output.capacity() > self.output.len();
            if taken == data.len() && (produced == 0 || spare) {
                return Ok(taken);
            }
        }
    }
}

impl AsyncRead for Deflate {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Inflated bytes may be waiting from input already taken (the last read filled its
            // buffer): asked for before reading more.
            {
                let out = buf.initialize_unfilled();
                let (before_in, before_out) =
                    (this.decompress.total_in(), this.decompress.total_out());
                let status = this
                    .decompress
                    .decompress(
                        &this.input[this.start..this.end],
                        out,
                        FlushDecompress::Sync,
                    )
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                this.start += (this.decompress.total_in() - before_in) as usize;
                let produced = (this.decompress.total_out() - before_out) as usize;
                if produced > 0 {
                    buf.advance(produced);
                    return Poll::Ready(Ok(()));
                }
                if this.eof || status == Status::StreamEnd {
                    // The client ended its stream or its connection: end of input.
                    return Poll::Ready(Ok(()));
                }
            }
            // Need more compressed input.
            if this.start > 0 {
                this.input.copy_within(this.start..this.end, 0);
                this.end -= this.start;
                this.start = 0;
            }
            if this.end == this.input.len() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a DEFLATE block that inflates to nothing",
                )));
            }
            let mut more = ReadBuf::new(&mut this.input[this.end..]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut more) {
                Poll::Ready(Ok(())) => {
                    let n = more.filled().len();
                    if n == 0 {
                        this.eof = true;
                    }
                    this.end += n;
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for Deflate {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.output.len() >= WRITE_BACKLOG {
            match this.drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending if this.output.len() >= WRITE_BACKLOG => return Poll::Pending,
                Poll::Pending => {}
            }
        }
        this.dirty = true;
        Poll::Ready(this.deflate(data, FlushCompress::None))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if std::mem::take(&mut this.dirty) {
            this.deflate(&[], FlushCompress::Sync)?;
        }
        match this.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.deflate(&[], FlushCompress::Finish)?;
        match this.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_shutdown(cx),
            other => other,
        }
    }
}
