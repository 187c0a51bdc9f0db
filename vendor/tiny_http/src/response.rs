use crate::common::{HTTPVersion, Header, StatusCode};
use httpdate::HttpDate;
use std::cmp::Ordering;
use std::sync::mpsc::Receiver;

use std::io::Result as IoResult;
use std::io::{self, Cursor, Read, Write};

use std::fmt;
use std::fs::File;

use std::str::FromStr;
use std::time::SystemTime;

/// Object representing an HTTP response whose purpose is to be given to a `Request`.
///
/// Some headers cannot be changed. Trying to define the value
/// of one of these will have no effect:
///
///  - `Connection`
///  - `Trailer`
///  - `Transfer-Encoding`
///  - `Upgrade`
///
/// Some headers have special behaviors:
///
///  - `Content-Encoding`: If you define this header, the library
///     will assume that the data from the `Read` object has the specified encoding
///     and will just pass-through.
///
///  - `Content-Length`: The length of the data should be set manually
///     using the `Reponse` object's API. Attempting to set the value of this
///     header will be equivalent to modifying the size of the data but the header
///     itself may not be present in the final result.
///
///  - `Content-Type`: You may only set this header to one value at a time. If you
///     try to set it more than once, the existing value will be overwritten. This
///     behavior differs from the default for most headers, which is to allow them to
///     be set multiple times in the same response.
///
pub struct Response<R> {
    reader: R,
    status_code: StatusCode,
    headers: Vec<Header>,
    data_length: Option<usize>,
    chunked_threshold: Option<usize>,
    /// clef-agent patch: headers known when the program is built, written without allocating.
    static_headers: Vec<(&'static str, &'static str)>,
}

/// A `Response` without a template parameter.
pub type ResponseBox = Response<Box<dyn Read + Send>>;

/// Transfer encoding to use when sending the message.
/// Note that only *supported* encoding are listed here.
#[derive(Copy, Clone)]
enum TransferEncoding {
    Identity,
    Chunked,
}

impl FromStr for TransferEncoding {
    type Err = ();

    fn from_str(input: &str) -> Result<TransferEncoding, ()> {
        if input.eq_ignore_ascii_case("identity") {
            Ok(TransferEncoding::Identity)
        } else if input.eq_ignore_ascii_case("chunked") {
            Ok(TransferEncoding::Chunked)
        } else {
            Err(())
        }
    }
}

/// The length of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only form `HttpDate`
/// writes.
const DATE_LENGTH: usize = 29;

/// The value of a `Date:` header for now.
///
/// clef-agent patch: formatted once per second per thread instead of once per response, into
/// an array rather than a new `String`.
fn with_date_header_value<T>(use_value: impl FnOnce(&str) -> T) -> T {
    thread_local! {
        static DATE: std::cell::Cell<(u64, [u8; DATE_LENGTH])> = const { std::cell::Cell::new((u64::MAX, [0; DATE_LENGTH])) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let (formatted_at, mut text) = DATE.get();
    if formatted_at != second {
        let mut out = FixedText { bytes: &mut text, len: 0 };
        if fmt::Write::write_fmt(&mut out, format_args!("{}", HttpDate::from(now))).is_ok() && out.len == DATE_LENGTH {
            DATE.set((second, text));
        }
    }
    use_value(std::str::from_utf8(&text).unwrap_or(""))
}

/// `fmt::Write` into a fixed array; fails when the text does not fit.
struct FixedText<'a> {
    bytes: &'a mut [u8],
    len: usize,
}

impl fmt::Write for FixedText<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let end = self.len + text.len();
        self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?.copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Appends the status line, the headers and the empty line that ends them to `head`.
///
/// clef-agent patch: the head is assembled in memory and sent with the start of the body in
/// one write, instead of a write per piece; `Server`, `Date` and the framing header are
/// written here rather than allocated as `Header`s. Same bytes as before.
fn write_message_header(
    head: &mut Vec<u8>,
    http_version: &HTTPVersion,
    status_code: &StatusCode,
    headers: &[Header],
    static_headers: &[(&'static str, &'static str)],
    framing: Option<(&str, &str)>,
    connection: Option<&str>,
) {
    let line = |head: &mut Vec<u8>, name: &str, value: &str| {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    };
    let has = |name: &'static str| {
        headers.iter().any(|h| h.field.equiv(name))
            || static_headers.iter().any(|(field, _)| field.eq_ignore_ascii_case(name))
    };
    head.extend_from_slice(b"HTTP/");
    push_decimal(head, usize::from(http_version.0));
    head.push(b'.');
    push_decimal(head, usize::from(http_version.1));
    head.push(b' ');
    push_decimal(head, usize::from(status_code.0));
    head.push(b' ');
    head.extend_from_slice(status_code.default_reason_phrase().as_bytes());
    head.extend_from_slice(b"\r\n");
    if !has("Server") {
        line(head, "Server", "tiny-http (Rust)");
    }
    if !has("Date") {
        with_date_header_value(|date| line(head, "Date", date));
    }
    for header in headers {
        line(head, header.field.as_str().as_str(), header.value.as_str());
    }
    for (name, value) in static_headers {
        line(head, name, value);
    }
    if let Some((name, value)) = framing {
        line(head, name, value);
    }
    if let Some(value) = connection {
        line(head, "Connection", value);
    }
    head.extend_from_slice(b"\r\n");
}

/// Appends `number` in decimal without allocating.
fn push_decimal(out: &mut Vec<u8>, number: usize) {
    out.extend_from_slice(decimal(&mut [0u8; 20], number).as_bytes());
}

/// `number` in decimal, written at the end of `digits`.
fn decimal(digits: &mut [u8; 20], mut number: usize) -> &str {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (number % 10) as u8;
        number /= 10;
        if number == 0 {
            break;
        }
    }
    std::str::from_utf8(&digits[start..]).unwrap_or("0")
}

fn choose_transfer_encoding(
    status_code: StatusCode,
    request_headers: &[Header],
    http_version: &HTTPVersion,
    entity_length: &Option<usize>,
    has_additional_headers: bool,
    chunked_threshold: usize,
) -> TransferEncoding {
    use crate::util;

    // HTTP 1.0 doesn't support other encoding
    if *http_version <= (1, 0) {
        return TransferEncoding::Identity;
    }

    // Per section 3.3.1 of RFC7230:
    // A server MUST NOT send a Transfer-Encoding header field in any response with a status code
    // of 1xx (Informational) or 204 (No Content).
    if status_code.0 < 200 || status_code.0 == 204 {
        return TransferEncoding::Identity;
    }

    // parsing the request's TE header
    let user_request = request_headers
        .iter()
        // finding TE
        .find(|h| h.field.equiv("TE"))
        // getting its value
        .map(|h| h.value.clone())
        // getting the corresponding TransferEncoding
        .and_then(|value| {
            // getting list of requested elements
            let mut parse = util::parse_header_value(value.as_str()); // TODO: remove conversion

            // sorting elements by most priority
            parse.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal));

            // trying to parse each requested encoding
            for value in parse.iter() {
                // q=0 are ignored
                if value.1 <= 0.0 {
                    continue;
                }

                if let Ok(te) = TransferEncoding::from_str(value.0) {
                    return Some(te);
                }
            }

            // encoding not found
            None
        });

    if let Some(user_request) = user_request {
        return user_request;
    }

    // if we have additional headers, using chunked
    if has_additional_headers {
        return TransferEncoding::Chunked;
    }

    // if we don't have a Content-Length, or if the Content-Length is too big, using chunks writer
    if entity_length
        .as_ref()
        .map_or(true, |val| *val >= chunked_threshold)
    {
        return TransferEncoding::Chunked;
    }

    // Identity by default
    TransferEncoding::Identity
}

impl<R> Response<R>
where
    R: Read,
{
    /// Creates a new Response object.
    ///
    /// The `additional_headers` argument is a receiver that
    ///  may provide headers even after the response has been sent.
    ///
    /// All the other arguments are straight-forward.
    pub fn new(
        status_code: StatusCode,
        headers: Vec<Header>,
        data: R,
        data_length: Option<usize>,
        additional_headers: Option<Receiver<Header>>,
    ) -> Response<R> {
        let mut response = Response {
            reader: data,
            status_code,
            headers: Vec::with_capacity(headers.len()),
            data_length,
            chunked_threshold: None,
            static_headers: Vec::new(),
        };

        for h in headers {
            response.add_header(h)
        }

        // dummy implementation
        if let Some(additional_headers) = additional_headers {
            for h in additional_headers.iter() {
                response.add_header(h)
            }
        }

        response
    }

    /// Set a threshold for `Content-Length` where we chose chunked
    /// transfer. Notice that chunked transfer might happen regardless of
    /// this threshold, for instance when the request headers indicate
    /// it is wanted or when there is no `Content-Length`.
    pub fn with_chunked_threshold(mut self, length: usize) -> Response<R> {
        self.chunked_threshold = Some(length);
        self
    }

    /// Convert the response into the underlying `Read` type.
    ///
    /// This is mainly useful for testing as it must consume the `Response`.
    pub fn into_reader(self) -> R {
        self.reader
    }

    /// The current `Content-Length` threshold for switching over to
    /// chunked transfer. The default is 32768 bytes. Notice that
    /// chunked transfer is mutually exclusive with sending a
    /// `Content-Length` header as per the HTTP spec.
    pub fn chunked_threshold(&self) -> usize {
        self.chunked_threshold.unwrap_or(32768)
    }

    /// Adds a header to the list.
    /// Does all the checks.
    pub fn add_header<H>(&mut self, header: H)
    where
        H: Into<Header>,
    {
        let header = header.into();

        // ignoring forbidden headers
        if header.field.equiv("Connection")
            || header.field.equiv("Trailer")
            || header.field.equiv("Transfer-Encoding")
            || header.field.equiv("Upgrade")
        {
            return;
        }

        // if the header is Content-Length, setting the data length
        if header.field.equiv("Content-Length") {
            if let Ok(val) = usize::from_str(header.value.as_str()) {
                self.data_length = Some(val)
            }

            return;
        // if the header is Content-Type and it's already set, overwrite it
        } else if header.field.equiv("Content-Type") {
            if let Some(content_type_header) = self
                .headers
                .iter_mut()
                .find(|h| h.field.equiv("Content-Type"))
            {
                content_type_header.value = header.value;
                return;
            }
        }

        self.headers.push(header);
    }

    /// Returns the same request, but with an additional header.
    ///
    /// Some headers cannot be modified and some other have a
    ///  special behavior. See the documentation above.
    #[inline]
    pub fn with_header<H>(mut self, header: H) -> Response<R>
    where
        H: Into<Header>,
    {
        self.add_header(header.into());
        self
    }

    /// Returns the same response with these headers added, written as given.
    ///
    /// clef-agent patch: for headers whose names and values are constants; unlike
    /// [`Response::with_header`] they are not parsed or copied, and they must not be one of
    /// the headers the server manages (`Connection`, `Content-Length`, `Trailer`,
    /// `Transfer-Encoding`, `Upgrade`).
    pub fn with_static_headers(mut self, headers: Vec<(&'static str, &'static str)>) -> Response<R> {
        self.static_headers = headers;
        self
    }

    /// Returns the same request, but with a different status code.
    #[inline]
    pub fn with_status_code<S>(mut self, code: S) -> Response<R>
    where
        S: Into<StatusCode>,
    {
        self.status_code = code.into();
        self
    }

    /// Returns the same request, but with different data.
    pub fn with_data<S>(self, reader: S, data_length: Option<usize>) -> Response<S>
    where
        S: Read,
    {
        Response {
            reader,
            headers: self.headers,
            status_code: self.status_code,
            data_length,
            chunked_threshold: self.chunked_threshold,
            static_headers: self.static_headers,
        }
    }

    /// Prints the HTTP response to a writer.
    ///
    /// This function is the one used to send the response to the client's socket.
    /// Therefore you shouldn't expect anything pretty-printed or even readable.
    ///
    /// The HTTP version and headers passed as arguments are used to
    ///  decide which features (most notably, encoding) to use.
    ///
    /// Note: does not flush the writer.
    pub fn raw_print<W: Write>(
        self,
        writer: W,
        http_version: HTTPVersion,
        request_headers: &[Header],
        do_not_send_body: bool,
        upgrade: Option<&str>,
    ) -> IoResult<()> {
        self.raw_print_with_connection(writer, http_version, request_headers, do_not_send_body, upgrade, None)
    }

    /// clef-agent patch: [`Response::raw_print`] with the `Connection` header the server owes
    /// the client: `close` when it closes the connection after this answer (RFC 9112 §9.6; a
    /// pooling client would otherwise reuse a closed socket), `keep-alive` for an HTTP/1.0
    /// client whose connection stays open.
    pub(crate) fn raw_print_with_connection<W: Write>(
        mut self,
        mut writer: W,
        http_version: HTTPVersion,
        request_headers: &[Header],
        do_not_send_body: bool,
        upgrade: Option<&str>,
        connection: Option<&'static str>,
    ) -> IoResult<()> {
        let mut transfer_encoding = Some(choose_transfer_encoding(
            self.status_code,
            request_headers,
            &http_version,
            &self.data_length,
            false, /* TODO */
            self.chunked_threshold(),
        ));

        // handling upgrade
        if let Some(upgrade) = upgrade {
            self.headers.insert(
                0,
                Header::from_bytes(&b"Upgrade"[..], upgrade.as_bytes()).unwrap(),
            );
            self.headers.insert(
                0,
                Header::from_bytes(&b"Connection"[..], &b"upgrade"[..]).unwrap(),
            );
            transfer_encoding = None;
        }

        // if the transfer encoding is identity, the content length must be known ; therefore if
        // we don't know it, we buffer the entire response first here
        // while this is an expensive operation, it is only ever needed for clients using HTTP 1.0
        let (mut reader, data_length) = match (self.data_length, transfer_encoding) {
            (Some(l), _) => (BodySource::Given(self.reader), Some(l)),
            (None, Some(TransferEncoding::Identity)) => {
                let mut buf = Vec::new();
                self.reader.read_to_end(&mut buf)?;
                let l = buf.len();
                (BodySource::Buffered(Cursor::new(buf)), Some(l))
            }
            _ => (BodySource::Given(self.reader), None),
        };

        // checking whether to ignore the body of the response
        let do_not_send_body = do_not_send_body
            || match self.status_code.0 {
                // status code 1xx, 204 and 304 MUST not include a body
                100..=199 | 204 | 304 => true,
                _ => false,
            };

        // preparing headers for transfer
        let mut length_digits = [0u8; 20];
        let framing = match transfer_encoding {
            Some(TransferEncoding::Chunked) => Some(("Transfer-Encoding", "chunked")),
            Some(TransferEncoding::Identity) => {
                assert!(data_length.is_some());
                Some(("Content-Length", decimal(&mut length_digits, data_length.unwrap_or(0))))
            }
            _ => None,
        };

        // room for the head and the first piece of the body, so neither reallocates
        let piece = if do_not_send_body { 0 } else { data_length.map_or(0, |length| length.min(PIECE)) };
        let mut head = Vec::with_capacity(256 + piece);
        write_message_header(
            &mut head,
            &http_version,
            &self.status_code,
            &self.headers,
            &self.static_headers,
            framing,
            if upgrade.is_some() { None } else { connection },
        );

        // sending the head and the body
        match transfer_encoding {
            Some(TransferEncoding::Chunked) if !do_not_send_body => {
                use chunked_transfer::Encoder;

                writer.write_all(&head)?;
                let mut writer = Encoder::new(writer);
                copy_through_heap(&mut reader, &mut writer, None, Vec::new())?;
            }

            Some(TransferEncoding::Identity) if !do_not_send_body && data_length.unwrap_or(0) >= 1 => {
                copy_through_heap(&mut reader, &mut writer, data_length, head)?;
            }

            _ => writer.write_all(&head)?,
        }

        Ok(())
    }

    /// Retrieves the current value of the `Response` status code
    pub fn status_code(&self) -> StatusCode {
        self.status_code
    }

    /// Retrieves the current value of the `Response` data length
    pub fn data_length(&self) -> Option<usize> {
        self.data_length
    }

    /// Retrieves the current list of `Response` headers
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }
}

impl<R> Response<R>
where
    R: Read + Send + 'static,
{
    /// Turns this response into a `Response<Box<Read + Send>>`.
    pub fn boxed(self) -> ResponseBox {
        Response {
            reader: Box::new(self.reader) as Box<dyn Read + Send>,
            status_code: self.status_code,
            headers: self.headers,
            data_length: self.data_length,
            chunked_threshold: self.chunked_threshold,
            static_headers: self.static_headers,
        }
    }
}

impl Response<File> {
    /// Builds a new `Response` from a `File`.
    ///
    /// The `Content-Type` will **not** be automatically detected,
    ///  you must set it yourself.
    pub fn from_file(file: File) -> Response<File> {
        let file_size = file.metadata().ok().map(|v| v.len() as usize);

        Response::new(
            StatusCode(200),
            Vec::with_capacity(0),
            file,
            file_size,
            None,
        )
    }
}

impl Response<Cursor<Vec<u8>>> {
    pub fn from_data<D>(data: D) -> Response<Cursor<Vec<u8>>>
    where
        D: Into<Vec<u8>>,
    {
        let data = data.into();
        let data_len = data.len();

        Response::new(
            StatusCode(200),
            Vec::with_capacity(0),
            Cursor::new(data),
            Some(data_len),
            None,
        )
    }

    pub fn from_string<S>(data: S) -> Response<Cursor<Vec<u8>>>
    where
        S: Into<String>,
    {
        let data = data.into();
        let data_len = data.len();

        Response::new(
            StatusCode(200),
            vec![
                Header::from_bytes(&b"Content-Type"[..], &b"text/plain; charset=UTF-8"[..])
                    .unwrap(),
            ],
            Cursor::new(data.into_bytes()),
            Some(data_len),
            None,
        )
    }
}

impl Response<io::Empty> {
    /// Builds an empty `Response` with the given status code.
    pub fn empty<S>(status_code: S) -> Response<io::Empty>
    where
        S: Into<StatusCode>,
    {
        Response::new(
            status_code.into(),
            Vec::with_capacity(0),
            io::empty(),
            Some(0),
            None,
        )
    }

    /// DEPRECATED. Use `empty` instead.
    pub fn new_empty(status_code: StatusCode) -> Response<io::Empty> {
        Response::empty(status_code)
    }
}

impl Clone for Response<io::Empty> {
    fn clone(&self) -> Response<io::Empty> {
        Response {
            reader: io::empty(),
            status_code: self.status_code,
            headers: self.headers.clone(),
            data_length: self.data_length,
            chunked_threshold: self.chunked_threshold,
            static_headers: self.static_headers.clone(),
        }
    }
}

/// clef-agent patch: writes a complete answer whose body is `body` as it lies in memory
/// (`Request::respond_with_bytes`): the head from a buffer the thread keeps (it holds nothing
/// but the status, constant headers, the length and the date), then head and body in vectored
/// writes straight from where they are, with `Content-Length` framing. No copy of the body is
/// made, so none is left behind, on the heap or on a stack.
pub(crate) fn write_bytes_response<W: Write>(
    writer: &mut W,
    http_version: &HTTPVersion,
    status_code: StatusCode,
    headers: &[(&'static str, &'static str)],
    body: &[u8],
    send_body: bool,
    connection: Option<&'static str>,
) -> IoResult<()> {
    thread_local! {
        static HEAD: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    }
    // status codes 1xx, 204 and 304 never have a body (as in `raw_print_with_connection`)
    let send_body = send_body && !matches!(status_code.0, 100..=199 | 204 | 304);
    let mut head = HEAD.take();
    head.clear();
    let mut length_digits = [0u8; 20];
    let length = decimal(&mut length_digits, body.len());
    write_message_header(&mut head, http_version, &status_code, &[], headers, Some(("Content-Length", length)), connection);
    let result = write_all_vectored(writer, &mut [io::IoSlice::new(&head), io::IoSlice::new(if send_body { body } else { &[] })]);
    // a head made big by unusual headers is not kept
    if head.capacity() <= 1024 {
        HEAD.set(head);
    }
    result
}

/// `Write::write_all_vectored`, which is not stable yet.
fn write_all_vectored<W: Write>(writer: &mut W, mut slices: &mut [io::IoSlice<'_>]) -> IoResult<()> {
    io::IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match writer.write_vectored(slices) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "failed to write the whole response")),
            Ok(written) => io::IoSlice::advance_slices(&mut slices, written),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// The largest piece of a body sent in one write (clef-agent patch).
const PIECE: usize = 64 * 1024;

/// A response body as given, or read into memory first (HTTP/1.0 and no known length).
///
/// clef-agent patch: replaces a `Box<dyn Read>`, one allocation per response.
enum BodySource<R> {
    Given(R),
    Buffered(Cursor<Vec<u8>>),
}

impl<R: Read> Read for BodySource<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self {
            BodySource::Given(reader) => reader.read(buf),
            BodySource::Buffered(cursor) => cursor.read(buf),
        }
    }
}

/// `io::copy` through a heap buffer. `io::copy` copies through an 8 KiB buffer on the calling
/// thread's stack, where the last body a thread sent stays until it sends another; a heap
/// buffer is freed (and, with a zeroing global allocator, wiped) when the body is sent.
fn copy_through_heap<R: Read + ?Sized, W: Write + ?Sized>(
    reader: &mut R,
    writer: &mut W,
    length: Option<usize>,
    head: Vec<u8>,
) -> IoResult<u64> {
    // clef-agent patch: `head` goes out in the same write as the first piece of the body, and a
    // known body of up to 64 KiB in a single write.
    let piece = length.map_or(8192, |length| length.clamp(1, PIECE));
    let mut buffer = head;
    buffer.reserve_exact(piece);
    let mut total = 0u64;
    loop {
        let start = buffer.len();
        buffer.resize(start + piece, 0);
        let result = reader.read(&mut buffer[start..]);
        let count = match result {
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {
                buffer.truncate(start);
                continue;
            }
            Err(error) => return Err(error),
        };
        buffer.truncate(start + count);
        if !buffer.is_empty() {
            writer.write_all(&buffer)?;
        }
        total += count as u64;
        if count == 0 || length.is_some_and(|length| total >= length as u64) {
            return Ok(total);
        }
        buffer.clear();
    }
}
