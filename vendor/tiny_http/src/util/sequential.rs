use std::io::Result as IoResult;
use std::io::{BufRead, Error as IoError, ErrorKind, IoSlice, Read, Write};

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use std::mem;

// clef-agent patch: the readers and writers of consecutive requests pass the stream on with a
// one-value `Handover` instead of an `std::sync::mpsc` channel per request. A channel cost two
// allocations and several atomic operations on each side; a handover costs one allocation, and
// a futex call only when a thread actually waits. The order they enforce is unchanged.

/// A one-value hand-over from one thread to another.
struct Slot<T> {
    state: Mutex<Handover<T>>,
    changed: Condvar,
}

enum Handover<T> {
    /// Nothing given yet; `waiting` when the taker sleeps on the condition variable.
    Pending { waiting: bool },
    Given(T),
    /// Taken, or the giver went away without giving.
    Done,
}

struct Giver<T>(Arc<Slot<T>>);

struct Taker<T>(Arc<Slot<T>>);

/// clef-agent patch: a hand-over slot nobody else holds any more, used again for the next
/// request instead of a new one (the steady state of a keep-alive connection allocates nothing).
pub struct SpareSlot<T>(Arc<Slot<T>>);

/// A new hand-over, through `spare` when there is one.
fn handover<T>(spare: Option<SpareSlot<T>>) -> (Giver<T>, Taker<T>) {
    let slot = match spare {
        Some(SpareSlot(slot)) => slot,
        None => Arc::new(Slot {
            state: Mutex::new(Handover::Pending { waiting: false }),
            changed: Condvar::new(),
        }),
    };
    (Giver(slot.clone()), Taker(slot))
}

impl<T> Taker<T> {
    /// This taker's slot, emptied, when its giver is gone too (a giver settles the slot when
    /// it goes); else the taker itself.
    fn into_spare_or_self(self) -> Result<SpareSlot<T>, Taker<T>> {
        let mut slot = self.0;
        match Arc::get_mut(&mut slot) {
            Some(unique) => {
                *unique.state.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                    Handover::Pending { waiting: false };
                Ok(SpareSlot(slot))
            }
            None => Err(Taker(slot)),
        }
    }
}

fn lock<T>(slot: &Slot<T>) -> MutexGuard<'_, Handover<T>> {
    slot.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T> Giver<T> {
    fn give(self, value: T) {
        self.settle(Handover::Given(value));
    }

    fn settle(&self, outcome: Handover<T>) {
        let mut state = lock(&self.0);
        if let Handover::Pending { waiting } = *state {
            *state = outcome;
            if waiting {
                self.0.changed.notify_one();
            }
        }
    }
}

impl<T> Drop for Giver<T> {
    fn drop(&mut self) {
        self.settle(Handover::Done);
    }
}

impl<T> Taker<T> {
    /// Waits for the value; `None` when the giver went away without giving one.
    fn take(&self) -> Option<T> {
        let mut state = lock(&self.0);
        while let Handover::Pending { .. } = *state {
            *state = Handover::Pending { waiting: true };
            state = self
                .0
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        match mem::replace(&mut *state, Handover::Done) {
            Handover::Given(value) => Some(value),
            _ => None,
        }
    }
}

pub struct SequentialReaderBuilder<R>
where
    R: Read + Send,
{
    inner: SequentialReaderBuilderInner<R>,
}

enum SequentialReaderBuilderInner<R>
where
    R: Read + Send,
{
    First(R),
    NotFirst(Taker<R>),
}

pub struct SequentialReader<R>
where
    R: Read + Send,
{
    inner: SequentialReaderInner<R>,
    next: Option<Giver<R>>,
    // clef-agent patch: the slot this reader got the stream through, for the next reader
    spent: Option<Taker<R>>,
}

enum SequentialReaderInner<R>
where
    R: Read + Send,
{
    MyTurn(R),
    Waiting(Taker<R>),
    Empty,
}

pub struct SequentialWriterBuilder<W>
where
    W: Write + Send,
{
    writer: Arc<Mutex<W>>,
    next_trigger: Option<Taker<()>>,
}

pub struct SequentialWriter<W>
where
    W: Write + Send,
{
    trigger: Option<Taker<()>>,
    writer: Arc<Mutex<W>>,
    on_finish: Option<Giver<()>>,
}

impl<R: Read + Send> SequentialReaderBuilder<R> {
    pub fn new(reader: R) -> SequentialReaderBuilder<R> {
        SequentialReaderBuilder {
            inner: SequentialReaderBuilderInner::First(reader),
        }
    }
}

impl<W: Write + Send> SequentialWriterBuilder<W> {
    pub fn new(writer: W) -> SequentialWriterBuilder<W> {
        SequentialWriterBuilder {
            writer: Arc::new(Mutex::new(writer)),
            next_trigger: None,
        }
    }
}

impl<R: Read + Send> Iterator for SequentialReaderBuilder<R> {
    type Item = SequentialReader<R>;

    fn next(&mut self) -> Option<SequentialReader<R>> {
        Some(self.next_reader())
    }
}

impl<R: Read + Send> SequentialReaderBuilder<R> {
    /// clef-agent patch: the next reader, without an `Option` that is never `None`.
    pub fn next_reader(&mut self) -> SequentialReader<R> {
        self.next_reader_reusing(None)
    }

    /// clef-agent patch: [`Self::next_reader`] through `spare` (see
    /// [`SequentialReader::take_spent_slot`]) when there is one, instead of a new slot.
    pub fn next_reader_reusing(&mut self, spare: Option<SpareSlot<R>>) -> SequentialReader<R> {
        let (giver, taker) = handover(spare);

        let inner = mem::replace(&mut self.inner, SequentialReaderBuilderInner::NotFirst(taker));

        match inner {
            SequentialReaderBuilderInner::First(reader) => SequentialReader {
                inner: SequentialReaderInner::MyTurn(reader),
                next: Some(giver),
                spent: None,
            },

            SequentialReaderBuilderInner::NotFirst(previous) => SequentialReader {
                inner: SequentialReaderInner::Waiting(previous),
                next: Some(giver),
                spent: None,
            },
        }
    }
}

impl<W: Write + Send> Iterator for SequentialWriterBuilder<W> {
    type Item = SequentialWriter<W>;
    fn next(&mut self) -> Option<SequentialWriter<W>> {
        Some(self.next_writer())
    }
}

impl<W: Write + Send> SequentialWriterBuilder<W> {
    /// clef-agent patch: the next writer, without an `Option` that is never `None`.
    pub fn next_writer(&mut self) -> SequentialWriter<W> {
        // clef-agent patch: when the previous writer is gone (its request was answered), this
        // one has nobody to wait for, and their slot serves again instead of a new one
        let (trigger, spare) = match self.next_trigger.take().map(Taker::into_spare_or_self) {
            Some(Ok(spare)) => (None, Some(spare)),
            Some(Err(previous)) => (Some(previous), None),
            None => (None, None),
        };
        let (giver, taker) = handover(spare);
        self.next_trigger = Some(taker);

        SequentialWriter {
            trigger,
            writer: self.writer.clone(),
            on_finish: Some(giver),
        }
    }
}

impl<R: Read + Send> SequentialReader<R> {
    /// Waits until the previous reader is done, then returns the stream.
    fn turn(&mut self) -> IoResult<&mut R> {
        if let SequentialReaderInner::Waiting(ref taker) = self.inner {
            let now = match taker.take() {
                Some(reader) => SequentialReaderInner::MyTurn(reader),
                None => SequentialReaderInner::Empty,
            };
            if let SequentialReaderInner::Waiting(taker) = mem::replace(&mut self.inner, now) {
                self.spent = Some(taker);
            }
        }
        match self.inner {
            SequentialReaderInner::MyTurn(ref mut reader) => Ok(reader),
            _ => Err(IoError::new(
                ErrorKind::BrokenPipe,
                "the previous request's reader went away",
            )),
        }
    }
}

impl<R: Read + Send> SequentialReader<R> {
    /// clef-agent patch: the stream itself, once it is this reader's turn (socket timeouts).
    pub fn get_mut(&mut self) -> IoResult<&mut R> {
        self.turn()
    }

    /// clef-agent patch: the slot this reader got the stream through, once the reader before
    /// it is gone, for [`SequentialReaderBuilder::next_reader_reusing`].
    pub fn take_spent_slot(&mut self) -> Option<SpareSlot<R>> {
        self.spent.take().and_then(|taker| taker.into_spare_or_self().ok())
    }
}

impl<R: Read + Send> Read for SequentialReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        self.turn()?.read(buf)
    }
}

// clef-agent patch: lets the request parser read whole buffered lines (`read_until`).
impl<R: BufRead + Send> BufRead for SequentialReader<R> {
    fn fill_buf(&mut self) -> IoResult<&[u8]> {
        self.turn()?.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        if let Ok(reader) = self.turn() {
            reader.consume(amount)
        }
    }
}

impl<W: Write + Send> SequentialWriter<W> {
    /// Waits until the previous response is written, then locks the stream.
    fn turn(&mut self) -> IoResult<MutexGuard<'_, W>> {
        if let Some(trigger) = self.trigger.take() {
            trigger.take();
        }
        self.writer
            .lock()
            .map_err(|_| IoError::new(ErrorKind::BrokenPipe, "a writer panicked"))
    }
}

impl<W: Write + Send> Write for SequentialWriter<W> {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        self.turn()?.write(buf)
    }

    // clef-agent patch: a response's head and body in one system call (`Response::raw_print`)
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> IoResult<usize> {
        self.turn()?.write_vectored(bufs)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.turn()?.flush()
    }
}

impl<R> Drop for SequentialReader<R>
where
    R: Read + Send,
{
    fn drop(&mut self) {
        let inner = mem::replace(&mut self.inner, SequentialReaderInner::Empty);

        let reader = match inner {
            SequentialReaderInner::MyTurn(reader) => Some(reader),
            SequentialReaderInner::Waiting(taker) => taker.take(),
            SequentialReaderInner::Empty => None,
        };
        if let (Some(reader), Some(next)) = (reader, self.next.take()) {
            next.give(reader);
        }
    }
}

impl<W> Drop for SequentialWriter<W>
where
    W: Write + Send,
{
    fn drop(&mut self) {
        if let Some(on_finish) = self.on_finish.take() {
            on_finish.give(());
        }
    }
}
