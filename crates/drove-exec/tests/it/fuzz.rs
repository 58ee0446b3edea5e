//! A bounded, seeded fuzz run of every decoder of network bytes
//! (`drove_exec::fuzz`): real encodings (plans of TPC-H and other queries, MapReduce
//! plans, tickets, schemas, worker stream messages, Flight streams of blocks), then
//! mutations of them (protobuf-aware and byte-level) and random bytes. A panic in a
//! decoder fails the test with the seed, the iteration and the input.
//!
//! - `DROVE_FUZZ_SEED`: the run's seed (decimal or 0x-hex); printed by every run.
//! - `DROVE_FUZZ_ITERATIONS`: inputs per target, instead of each target's default.
//! - `DROVE_FUZZ_TARGET`: run only these targets (comma-separated names).
//! - `DROVE_FUZZ_CORPUS_OUT`: write each target's real encodings to
//!   `DIR/<target>/`, a seed corpus for the cargo-fuzz targets in `fuzz/`.
//! - `DROVE_FUZZ_REPLAY`: run the one target `DROVE_FUZZ_TARGET` names on this file (a
//!   saved failure) and nothing else, letting a panic through with its backtrace.
//! - `DROVE_FUZZ_VERBOSE`: print every input's iteration and size before it runs (to
//!   find the input that aborts the process, as a failed allocation does).
//!
//! Input `i` of a target depends only on the seed, the target and `i`, so a reported
//! failure replays with the same seed (and the same seed digest, also printed).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, DictionaryArray,
    FixedSizeBinaryArray, Float64Array, Int8Array, Int32Array, Int64Builder, LargeStringArray,
    ListArray, MapBuilder, StringArray, StringBuilder, StringViewArray, StructArray,
    TimestampMicrosecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use arrow::ipc::CompressionType;
use arrow::ipc::writer::IpcWriteOptions;
use arrow::record_batch::RecordBatch;
use arrow_flight::FlightData;
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use drove_exec::blocks::BlockKey;
use drove_exec::cache::{CacheCodec, CachedTable};
use drove_exec::datagen::Benchmark;
use drove_exec::fuzz::{self as targets, CACHED_TABLE, Decoder, HASH_JOB, RANGE_JOB};
use drove_exec::mapreduce::nodes::{OutputFormat, OutputSpec};
use drove_exec::mapreduce::plan::MapReduceSpec;
use drove_exec::tables::{Format, TableSpec};
use drove_exec::{codec, mapreduce, planner, session, shuffle, tables};
use drove_proto as pb;
use drove_proto::Message;
use futures::{StreamExt, TryStreamExt};

/// The seed of a run that sets no `DROVE_FUZZ_SEED`.
const DEFAULT_SEED: u64 = 0x5EED_D40E;

/// Stack of the thread the decoders run on: a worker's task threads' (and less than the
/// coordinator's planning thread's), so a deep plan overflows here only if it would
/// there.
const STACK_BYTES: usize = 256 << 20;

/// Failures kept per target before it stops.
const FAILURES_MAX: usize = 5;

/// Bytes of a failing input shown in hex.
const HEX_SHOWN_MAX: usize = 512;

/// Prints to the process's stderr, past the test harness's capture: the counts show in
/// every run, and the progress up to an abort (which no capture survives) too.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

#[test]
fn fuzz_network_decoders() {
    let thread = std::thread::Builder::new()
        .name("fuzz".into())
        .stack_size(STACK_BYTES)
        .spawn(run)
        .expect("a thread for the fuzz run");
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

fn run() {
    let seed = env_u64("DROVE_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let iterations = env_u64("DROVE_FUZZ_ITERATIONS").map(|n| n as usize);
    let verbose = std::env::var_os("DROVE_FUZZ_VERBOSE").is_some();
    let only: Option<Vec<String>> = std::env::var("DROVE_FUZZ_TARGET")
        .ok()
        .map(|s| s.split(',').map(|t| t.trim().to_string()).collect());
    if let Some(file) = std::env::var_os("DROVE_FUZZ_REPLAY") {
        let input = std::fs::read(&file).expect("DROVE_FUZZ_REPLAY names a readable file");
        let [name] = only.as_deref().unwrap_or_default() else {
            panic!("DROVE_FUZZ_REPLAY needs the one DROVE_FUZZ_TARGET it is an input of");
        };
        let (_, decode) = targets::TARGETS
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no fuzz target {name}"));
        let decoded = decode(&input);
        say!("fuzz: {name}: the input decoded: {decoded}");
        return;
    }
    say!("fuzz: seed {seed:#x} (replay with DROVE_FUZZ_SEED={seed:#x})");

    let started = Instant::now();
    let seeds = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(Seeds::make());
    say!("fuzz: real encodings made in {:?}", started.elapsed());
    if let Some(dir) = std::env::var_os("DROVE_FUZZ_CORPUS_OUT") {
        seeds.write_corpus(Path::new(&dir));
    }

    install_panic_hook();
    let mut report = Vec::new();
    let mut total = Duration::ZERO;
    for (name, decode) in targets::TARGETS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|t| t == name)) {
            continue;
        }
        let target = seeds.target(name);
        say!("fuzz: {name}: running");
        let run = target.run(
            name,
            decode,
            seed,
            iterations.unwrap_or(target.iterations),
            verbose,
        );
        total += run.elapsed;
        say!(
            "fuzz: {name}: {} inputs ({} real, digest {:016x}; {} decoded) in {:.1?}",
            run.inputs,
            target.seeds.len(),
            target.digest(),
            run.decoded,
            run.elapsed
        );
        if !run.caught.is_empty() {
            say!(
                "fuzz: {name}: {} panics inside libraries became errors at drove's boundary, at {} places{}",
                run.caught.values().sum::<usize>(),
                run.caught.len(),
                if verbose {
                    ":"
                } else {
                    " (DROVE_FUZZ_VERBOSE lists them)"
                }
            );
        }
        if verbose {
            for (at, n) in &run.caught {
                say!("fuzz:   {n} at {at}");
            }
        }
        report.extend(run.problems);
    }
    say!("fuzz: all targets in {total:.1?}");
    assert!(
        report.is_empty(),
        "{} problems (seed {seed:#x}):\n\n{}",
        report.len(),
        report.join("\n\n")
    );
}

// ------------------------------------------------------------------ running a target

/// How a target's inputs are mutated beyond bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A protobuf message: fields are removed, duplicated, reordered and changed, at
    /// any depth of nested messages, with their lengths kept right.
    Protobuf,
    /// Length-delimited Flight messages: frames are dropped, repeated, and their Arrow
    /// IPC header or body changed with the framing kept right.
    Flight,
    /// Arrow IPC (flatbuffers): bytes only.
    Bytes,
}

struct Target {
    /// Real encodings: the first `decodable` must decode, the rest drove refuses on
    /// purpose (e.g. compressed Flight batches).
    seeds: Vec<Vec<u8>>,
    decodable: usize,
    shape: Shape,
    iterations: usize,
}

struct Run {
    inputs: usize,
    decoded: usize,
    elapsed: Duration,
    problems: Vec<String>,
    /// Panics inside libraries that drove turned into errors, by location.
    caught: BTreeMap<String, usize>,
}

impl Target {
    /// FNV-1a of the seeds: two runs with the same seed try the same inputs if their
    /// digests agree.
    fn digest(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for seed in &self.seeds {
            for b in (seed.len() as u64).to_le_bytes().iter().chain(seed) {
                h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
            }
        }
        h
    }

    fn run(&self, name: &str, decode: Decoder, seed: u64, iterations: usize, verbose: bool) -> Run {
        let started = Instant::now();
        let mut run = Run {
            inputs: 0,
            decoded: 0,
            elapsed: Duration::ZERO,
            problems: Vec::new(),
            caught: BTreeMap::new(),
        };
        let mut failures = 0;
        // The real encodings first, as they are: each must decode, but for those
        // drove refuses on purpose.
        let real = self
            .seeds
            .iter()
            .enumerate()
            .map(|(i, s)| (Err(i), s.clone()));
        let mutated = (0..iterations).map(|i| {
            let mut rng = Rng::new(seed ^ fnv(name.as_bytes()) ^ (i as u64).wrapping_mul(GOLDEN));
            (Ok(i), self.input(&mut rng))
        });
        for (iteration, input) in real.chain(mutated) {
            run.inputs += 1;
            if verbose {
                say!("fuzz: {name}: {iteration:?}, {} bytes", input.len());
            }
            match call(decode, &input, &mut run.caught) {
                Ok(true) => run.decoded += 1,
                Ok(false) => {
                    if let Err(real) = iteration
                        && real < self.decodable
                    {
                        run.problems.push(format!(
                            "{name}: real encoding {real} ({} bytes) does not decode: {}",
                            input.len(),
                            hex(&input)
                        ));
                    }
                }
                Err(panic) => {
                    failures += 1;
                    let at = match iteration {
                        Ok(i) => format!("iteration {i}"),
                        Err(real) => format!("real encoding {real}"),
                    };
                    let saved = save(name, seed, &at, &input);
                    run.problems.push(format!(
                        "{name}: {at} panicked: {panic}\n  input ({} bytes, saved as {}): {}",
                        input.len(),
                        saved.display(),
                        hex(&input)
                    ));
                    if failures >= FAILURES_MAX {
                        break;
                    }
                }
            }
        }
        run.elapsed = started.elapsed();
        run
    }

    /// One input: a real encoding mutated in one of several ways, a splice of two, or
    /// random bytes.
    fn input(&self, rng: &mut Rng) -> Vec<u8> {
        let roll = rng.below(100);
        if roll < 3 || self.seeds.is_empty() {
            let len = rng.below(257);
            return (0..len).map(|_| rng.byte()).collect();
        }
        let base = &self.seeds[rng.below(self.seeds.len())];
        let structured = roll < 65;
        let rounds = 1 + rng.below(3);
        let mut input = base.clone();
        for _ in 0..rounds {
            input = match (structured, self.shape) {
                (true, Shape::Protobuf) => mutate_proto(rng, &input, &self.seeds, 0),
                (true, Shape::Flight) => mutate_flight(rng, &input, &self.seeds),
                _ => mutate_bytes(rng, &input, &self.seeds),
            };
        }
        input
    }
}

thread_local! {
    /// Where and why each panic on this thread happened while a decoder ran.
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    static IN_DECODER: RefCell<bool> = const { RefCell::new(false) };
}

/// Records panics inside decoders quietly (with their location) and leaves every other
/// panic to the hook that was there.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_DECODER.with(|d| *d.borrow()) {
                let location = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                PANICS.with(|p| p.borrow_mut().push(format!("{message}{location}")));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs one decoder. A panic that escapes it becomes `Err` with its message and
/// location; panics it caught itself (a library's, turned into an error by drove) are
/// counted by location in `caught`.
fn call(
    decode: Decoder,
    input: &[u8],
    caught: &mut BTreeMap<String, usize>,
) -> Result<bool, String> {
    IN_DECODER.with(|d| *d.borrow_mut() = true);
    let result = catch_unwind(AssertUnwindSafe(|| decode(input)));
    IN_DECODER.with(|d| *d.borrow_mut() = false);
    let mut panics = PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()));
    let escaped = match result {
        Ok(decoded) => Ok(decoded),
        Err(_) => Err(panics.pop().unwrap_or_else(|| "a panic".into())),
    };
    for panic in panics {
        // Counted by where, not why: messages carry the input's numbers.
        let at = panic
            .rsplit_once(" at ")
            .map_or(panic.as_str(), |(_, at)| at);
        *caught.entry(at.to_string()).or_default() += 1;
    }
    escaped
}

/// Keeps a failing input whole, for replay (e.g. `cargo fuzz run TARGET FILE`).
fn save(name: &str, seed: u64, at: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("drove-fuzz-failures");
    let file = dir.join(format!("{name}-{seed:x}-{}.bin", at.replace(' ', "-")));
    let _ = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, input));
    file
}

fn hex(input: &[u8]) -> String {
    let shown: String = input
        .iter()
        .take(HEX_SHOWN_MAX)
        .map(|b| format!("{b:02x}"))
        .collect();
    if input.len() > HEX_SHOWN_MAX {
        format!("{shown}... ({} more bytes)", input.len() - HEX_SHOWN_MAX)
    } else {
        shown
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value} is not a number")))
}

// ------------------------------------------------------------------ randomness

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Numbers that find edge cases: zero, one, powers of two around type limits, the
/// maxima, and negative numbers as protobuf sends them.
const INTERESTING: [u64; 22] = [
    0,
    1,
    2,
    3,
    7,
    8,
    15,
    16,
    31,
    64,
    127,
    128,
    255,
    256,
    65_535,
    65_536,
    i32::MAX as u64,
    u32::MAX as u64,
    1 << 32,
    i64::MAX as u64,
    u64::MAX,
    (-2i64) as u64,
];

// ------------------------------------------------------------------ byte mutations

fn mutate_bytes(rng: &mut Rng, data: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut d = data.to_vec();
    match rng.below(9) {
        0 if !d.is_empty() => {
            let i = rng.below(d.len());
            d[i] ^= 1 << rng.below(8);
        }
        1 if !d.is_empty() => {
            let i = rng.below(d.len());
            d[i] = [0, 1, 0x7f, 0x80, 0xff, 0x10, 0x40, rng.byte()][rng.below(8)];
        }
        2 => d.truncate(rng.below(d.len() + 1)),
        3 => {
            let at = rng.below(d.len() + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            d.splice(at..at, bytes);
        }
        4 if !d.is_empty() => {
            let at = rng.below(d.len());
            let n = 1 + rng.below((d.len() - at).min(32));
            d.drain(at..at + n);
        }
        5 if !d.is_empty() => {
            let from = rng.below(d.len());
            let n = 1 + rng.below((d.len() - from).min(64));
            let piece = d[from..from + n].to_vec();
            let at = rng.below(d.len() + 1);
            d.splice(at..at, piece);
        }
        6 if d.len() >= 8 => {
            let width = if rng.chance(50) { 4 } else { 8 };
            let at = rng.below(d.len() - width + 1);
            let value = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
            d[at..at + width].copy_from_slice(&value[..width]);
        }
        7 if !seeds.is_empty() => {
            // The head of this input with the tail of another.
            let other = &seeds[rng.below(seeds.len())];
            let cut = rng.below(d.len() + 1);
            let from = rng.below(other.len() + 1);
            d.truncate(cut);
            d.extend_from_slice(&other[from..]);
        }
        _ if !d.is_empty() => {
            let i = rng.below(d.len());
            d[i] = rng.byte();
        }
        _ => d.push(rng.byte()),
    }
    d
}

// ------------------------------------------------------------------ protobuf mutations

#[derive(Clone)]
enum Wire {
    Varint(u64),
    Fixed64(u64),
    Len(Vec<u8>),
    Fixed32(u32),
}

#[derive(Clone)]
struct ProtoField {
    number: u64,
    wire: Wire,
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in 0..10 {
        let b = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << (7 * shift);
        if b < 0x80 {
            return Some(value);
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The fields of a protobuf message, or `None` if the bytes are not one.
fn parse_proto(buf: &[u8]) -> Option<Vec<ProtoField>> {
    let mut pos = 0;
    let mut fields = Vec::new();
    while pos < buf.len() {
        let key = read_varint(buf, &mut pos)?;
        let number = key >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return None;
        }
        let wire = match key & 7 {
            0 => Wire::Varint(read_varint(buf, &mut pos)?),
            1 => {
                let bytes = buf.get(pos..pos + 8)?;
                pos += 8;
                Wire::Fixed64(u64::from_le_bytes(bytes.try_into().ok()?))
            }
            2 => {
                let len = usize::try_from(read_varint(buf, &mut pos)?).ok()?;
                let bytes = buf.get(pos..pos.checked_add(len)?)?;
                pos += len;
                Wire::Len(bytes.to_vec())
            }
            5 => {
                let bytes = buf.get(pos..pos + 4)?;
                pos += 4;
                Wire::Fixed32(u32::from_le_bytes(bytes.try_into().ok()?))
            }
            _ => return None,
        };
        fields.push(ProtoField { number, wire });
    }
    Some(fields)
}

fn encode_proto(fields: &[ProtoField]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        let wire_type = match &f.wire {
            Wire::Varint(_) => 0,
            Wire::Fixed64(_) => 1,
            Wire::Len(_) => 2,
            Wire::Fixed32(_) => 5,
        };
        write_varint(&mut out, (f.number << 3) | wire_type);
        match &f.wire {
            Wire::Varint(v) => write_varint(&mut out, *v),
            Wire::Fixed64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Wire::Len(b) => {
                write_varint(&mut out, b.len() as u64);
                out.extend_from_slice(b);
            }
            Wire::Fixed32(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
    out
}

fn random_field(rng: &mut Rng) -> ProtoField {
    let number = 1 + rng.below(40) as u64;
    let wire = match rng.below(4) {
        0 => Wire::Varint(INTERESTING[rng.below(INTERESTING.len())]),
        1 => Wire::Fixed64(rng.next()),
        2 => Wire::Fixed32(rng.next() as u32),
        _ => Wire::Len((0..rng.below(9)).map(|_| rng.byte()).collect()),
    };
    ProtoField { number, wire }
}

/// Changes one field of a protobuf message, or of a message nested in it at any depth,
/// and re-encodes it with every length right. Bytes that are no message get byte
/// mutations.
fn mutate_proto(rng: &mut Rng, buf: &[u8], seeds: &[Vec<u8>], depth: usize) -> Vec<u8> {
    let Some(mut fields) = parse_proto(buf) else {
        return mutate_bytes(rng, buf, seeds);
    };
    if fields.is_empty() {
        fields.push(random_field(rng));
        return encode_proto(&fields);
    }
    let i = rng.below(fields.len());
    // Go down into a nested message three times in four.
    if let Wire::Len(inner) = &fields[i].wire
        && depth < 64
        && rng.chance(75)
        && parse_proto(inner).is_some_and(|f| !f.is_empty())
    {
        let inner = mutate_proto(rng, inner, seeds, depth + 1);
        fields[i].wire = Wire::Len(inner);
        return encode_proto(&fields);
    }
    match rng.below(8) {
        0 => {
            fields.remove(i);
        }
        1 => {
            let copy = fields[i].clone();
            let at = rng.below(fields.len() + 1);
            fields.insert(at, copy);
        }
        2 => {
            let j = rng.below(fields.len());
            fields.swap(i, j);
        }
        3 => fields[i].number = 1 + rng.below(40) as u64,
        4 => {
            let at = rng.below(fields.len() + 1);
            fields.insert(at, random_field(rng));
        }
        _ => {
            fields[i].wire = match &fields[i].wire {
                Wire::Varint(v) => Wire::Varint(if rng.chance(70) {
                    INTERESTING[rng.below(INTERESTING.len())]
                } else {
                    v.wrapping_add(rng.below(33) as u64).wrapping_sub(16)
                }),
                Wire::Fixed64(_) => Wire::Fixed64(if rng.chance(50) {
                    INTERESTING[rng.below(INTERESTING.len())]
                } else {
                    // NaN, infinities and signed zero as doubles.
                    [
                        f64::NAN,
                        f64::INFINITY,
                        f64::NEG_INFINITY,
                        -0.0,
                        f64::MIN_POSITIVE,
                    ][rng.below(5)]
                    .to_bits()
                }),
                Wire::Fixed32(_) => Wire::Fixed32(INTERESTING[rng.below(INTERESTING.len())] as u32),
                Wire::Len(b) => Wire::Len(if rng.chance(15) {
                    Vec::new()
                } else {
                    mutate_bytes(rng, b, seeds)
                }),
            };
        }
    }
    encode_proto(&fields)
}

// ------------------------------------------------------------------ Flight mutations

/// Changes one message of a Flight stream input (see `drove_exec::fuzz::flight_input`)
/// and frames the stream again.
fn mutate_flight(rng: &mut Rng, input: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut rest = input;
    let mut messages = Vec::new();
    while !rest.is_empty() {
        match FlightData::decode_length_delimited(&mut rest) {
            Ok(m) => messages.push(m),
            Err(_) => return mutate_bytes(rng, input, seeds),
        }
    }
    if messages.is_empty() {
        return mutate_bytes(rng, input, seeds);
    }
    let i = rng.below(messages.len());
    match rng.below(10) {
        0 => {
            messages.remove(i);
        }
        1 => {
            let copy = messages[i].clone();
            messages.insert(rng.below(messages.len() + 1), copy);
        }
        2 => {
            let j = rng.below(messages.len());
            messages.swap(i, j);
        }
        3 => {
            // The whole message as protobuf.
            let bytes = mutate_proto(rng, &messages[i].encode_to_vec(), seeds, 0);
            match FlightData::decode(bytes.as_slice()) {
                Ok(m) => messages[i] = m,
                Err(_) => return mutate_bytes(rng, input, seeds),
            }
        }
        4..=6 => {
            let header = mutate_bytes(rng, &messages[i].data_header, seeds);
            messages[i].data_header = header.into();
        }
        _ => {
            let body = mutate_bytes(rng, &messages[i].data_body, seeds);
            messages[i].data_body = body.into();
        }
    }
    targets::flight_input(&messages)
}

// ------------------------------------------------------------------ real encodings

/// Queries beyond TPC-H's: windows, set operations, scalar functions, nested types,
/// subqueries, outer joins, CSV tables, VALUES.
const SQL: [&str; 11] = [
    "SELECT o_custkey, o_totalprice, row_number() OVER (PARTITION BY o_custkey ORDER BY o_orderdate) AS rn, \
     sum(o_totalprice) OVER (PARTITION BY o_orderpriority ORDER BY o_orderkey ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS s \
     FROM orders",
    "SELECT n_name, upper(n_comment), length(n_comment), substr(n_name, 2, 3), n_name LIKE 'A%', \
     regexp_like(n_comment, 'ly'), CASE WHEN n_regionkey > 2 THEN 'hi' ELSE 'lo' END, coalesce(NULL, n_nationkey), \
     CAST(n_nationkey AS DOUBLE) / 3, n_nationkey % 4, abs(-n_regionkey), date '2024-01-31' + INTERVAL '1 month' \
     FROM nation WHERE n_nationkey IN (1, 2, 3) OR n_name BETWEEN 'A' AND 'F'",
    "SELECT DISTINCT c_mktsegment FROM customer UNION ALL SELECT r_name FROM region",
    "SELECT o_orderpriority, count(DISTINCT o_custkey), median(o_totalprice), stddev(o_totalprice), \
     array_agg(o_orderkey ORDER BY o_orderkey DESC), min(o_orderdate), bool_and(o_totalprice > 10) \
     FROM orders WHERE o_orderdate >= date '1995-01-01' GROUP BY o_orderpriority HAVING count(*) > 1",
    "WITH t AS (SELECT p_brand, avg(p_retailprice) AS a FROM part GROUP BY p_brand) \
     SELECT * FROM t WHERE a > 1000 ORDER BY a DESC LIMIT 5",
    "SELECT n.n_name, r.r_name FROM nation_csv n JOIN region_csv r ON n.n_regionkey = r.r_regionkey \
     WHERE r.r_name <> 'ASIA'",
    "SELECT unnest(make_array(n_nationkey, n_regionkey)) AS v, array_length(make_array(1, 2, 3)), \
     named_struct('a', n_name, 'b', n_nationkey) AS s FROM nation",
    "SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS v(x, y) CROSS JOIN region",
    "SELECT s_name FROM supplier WHERE NOT EXISTS (SELECT 1 FROM nation WHERE n_nationkey = s_nationkey AND n_name = 'X') \
     AND s_acctbal > (SELECT avg(s_acctbal) FROM supplier)",
    "SELECT c_custkey, o_orderkey FROM customer FULL OUTER JOIN orders ON c_custkey = o_custkey AND o_totalprice > 100000",
    "SELECT l_orderkey, l_shipmode FROM lineitem ORDER BY l_shipdate DESC, l_orderkey LIMIT 7 OFFSET 3",
];

/// TPC-H queries whose plans are used (15 creates a view, so is left out).
const TPCH_QUERIES: [usize; 14] = [1, 3, 4, 5, 7, 8, 9, 11, 13, 16, 18, 20, 21, 22];

/// The directory of [`data_dir`]: a new name whenever what is written there changes.
const DATA_DIR: &str = "drove-fuzz-data-v1";
const DATA_COMPLETE: &str = "COMPLETE";

/// Real encodings of everything a drove process decodes.
struct Seeds {
    physical_plans: Vec<Vec<u8>>,
    logical_plans: Vec<Vec<u8>>,
    tickets: Vec<Vec<u8>>,
    schemas: Vec<Vec<u8>>,
    worker_messages: Vec<Vec<u8>>,
    coordinator_messages: Vec<Vec<u8>>,
    submissions: Vec<Vec<u8>>,
    flight_blocks: Vec<Vec<u8>>,
    /// Flight streams drove refuses: compressed ones.
    flight_refused: Vec<Vec<u8>>,
}

impl Seeds {
    fn target(&self, name: &str) -> Target {
        let (seeds, shape, iterations) = match name {
            "physical_plan" => (&self.physical_plans, Shape::Protobuf, 20_000),
            "logical_plan" => (&self.logical_plans, Shape::Protobuf, 20_000),
            "block_ticket" => (&self.tickets, Shape::Protobuf, 20_000),
            "schema" => (&self.schemas, Shape::Bytes, 20_000),
            "worker_message" => (&self.worker_messages, Shape::Protobuf, 20_000),
            "coordinator_message" => (&self.coordinator_messages, Shape::Protobuf, 20_000),
            "submit_job_request" => (&self.submissions, Shape::Protobuf, 20_000),
            "flight_block" => (&self.flight_blocks, Shape::Flight, 20_000),
            other => panic!("no seeds for the fuzz target {other}; add them to Seeds"),
        };
        let mut seeds = seeds.clone();
        let decodable = seeds.len();
        if name == "flight_block" {
            seeds.extend(self.flight_refused.iter().cloned());
        }
        Target {
            seeds,
            decodable,
            shape,
            iterations,
        }
    }

    fn write_corpus(&self, dir: &Path) {
        for (name, _) in targets::TARGETS {
            let target_dir = dir.join(name);
            std::fs::create_dir_all(&target_dir).expect("the corpus directory");
            for (i, seed) in self.target(name).seeds.iter().enumerate() {
                std::fs::write(target_dir.join(format!("real-{i:03}")), seed)
                    .expect("a corpus file");
            }
        }
        say!("fuzz: real encodings written to {}", dir.display());
    }

    async fn make() -> Self {
        let data = data_dir();
        let text = data.join("text");
        let csv = data.join("csv");

        targets::setup();
        let settings = session::settings(2, None);
        let ctx = SessionContext::new_with_config(session::config(&settings).expect("settings"));
        let mut specs: Vec<TableSpec> =
            tables::generated_tables(&data.join("tpch"), Benchmark::Tpch).expect("tables");
        for name in ["nation", "region"] {
            specs.push(TableSpec {
                name: format!("{name}_csv"),
                path: data.join("tpch-csv").join(format!("{name}.csv")),
                format: Some(Format::Csv),
            });
        }
        for spec in &specs {
            tables::register(&ctx, spec).await.expect("a table");
        }
        let cached = CachedTable {
            id: 1,
            name: CACHED_TABLE.to_string(),
            schema: targets::cached_table_schema(),
            partitions: 2,
        };
        ctx.register_table(CACHED_TABLE, Arc::new(cached))
            .expect("the cached table");

        let queries: Vec<String> = TPCH_QUERIES
            .iter()
            .map(|n| {
                Benchmark::Tpch
                    .query(*n)
                    .expect("a TPC-H query")
                    .to_string()
            })
            .chain(SQL.iter().map(|s| s.to_string()))
            .collect();
        let mut physical_plans = Vec::new();
        let mut logical_plans = Vec::new();
        let mut stage_plans: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        let client_codec = CacheCodec::new([]);
        for sql in &queries {
            let df = ctx.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            let logical = df.logical_plan().clone();
            // As a client sends it, where datafusion-proto can encode it (not with
            // subqueries), and optimized (subqueries made joins).
            let optimized = ctx
                .state()
                .optimize(&logical)
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            for plan in [&logical, &optimized] {
                if let Ok(bytes) =
                    datafusion_proto::bytes::logical_plan_to_bytes_with_extension_codec(
                        plan,
                        &client_codec,
                    )
                {
                    logical_plans.push(bytes.to_vec());
                }
            }
            // As the coordinator plans it.
            let physical = ctx
                .state()
                .create_physical_plan(&logical)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            let physical = planner::prepare(physical).unwrap_or_else(|e| panic!("{sql}: {e}"));
            for stage in planner::split(physical)
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .stages
            {
                stage_plans.push(stage.plan);
            }
        }
        for sql in [
            format!("SELECT word, sum(n) AS n FROM {CACHED_TABLE} GROUP BY word ORDER BY n DESC"),
            format!("SELECT c.word, n_name FROM {CACHED_TABLE} c JOIN nation ON c.n = n_nationkey"),
        ] {
            let df = ctx.sql(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            logical_plans.push(
                datafusion_proto::bytes::logical_plan_to_bytes_with_extension_codec(
                    df.logical_plan(),
                    &client_codec,
                )
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .to_vec(),
            );
        }
        // MapReduce plans as a client builds them, whole (as submitted) and in stages
        // (as workers get them).
        let args: BTreeMap<String, String> = [("min".to_string(), "2".to_string())].into();
        for (job, inputs, format, args) in [
            (
                HASH_JOB,
                vec![text.clone()],
                OutputFormat::Text,
                BTreeMap::new(),
            ),
            (
                RANGE_JOB,
                vec![text.clone()],
                OutputFormat::Csv,
                args.clone(),
            ),
            (
                HASH_JOB,
                vec![csv.clone(), data.join("tpch/nation.parquet")],
                OutputFormat::Parquet,
                args,
            ),
        ] {
            let spec = MapReduceSpec {
                job: job.to_string(),
                args,
                inputs: (inputs.iter())
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect(),
                output: OutputSpec {
                    dir: data.join("out").to_string_lossy().into_owned(),
                    format,
                    token: "run-1".into(),
                },
                reducers: 3,
                combine: true,
            };
            let plan = mapreduce::plan::build(&spec, Default::default())
                .await
                .expect("a MapReduce plan");
            physical_plans.push(codec::plan_to_bytes(Arc::clone(&plan)).expect("encoded"));
            for stage in planner::split(plan).expect("MapReduce stages").stages {
                stage_plans.push(stage.plan);
            }
        }
        for plan in stage_plans {
            physical_plans.push(codec::plan_to_bytes(plan).expect("an encoded stage"));
        }
        physical_plans.sort_by_key(Vec::len);

        let keys = [
            BlockKey {
                job: 1,
                stage: 0,
                map_partition: 0,
                reduce_partition: 0,
                attempt: 0,
            },
            BlockKey {
                job: 42,
                stage: 3,
                map_partition: 7,
                reduce_partition: 11,
                attempt: 2,
            },
            BlockKey {
                job: u64::MAX,
                stage: u32::MAX,
                map_partition: u32::MAX,
                reduce_partition: u32::MAX,
                attempt: u32::MAX,
            },
        ];
        let tickets: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| shuffle::ticket(k, &[]).ticket.to_vec())
            .chain([shuffle::batch_ticket(&keys, &[7; 32]).ticket.to_vec()])
            .collect();

        let (rich_schema, rich_batch) = rich_batch();
        let mut schemas_of: Vec<SchemaRef> = vec![
            rich_schema,
            mapreduce::record_schema(),
            mapreduce::nodes::written_schema(),
            targets::cached_table_schema(),
            Arc::new(Schema::empty()),
        ];
        for name in tables::TPCH_TABLES {
            let table = ctx.table(name).await.expect("a TPC-H table");
            schemas_of.push(Arc::new(table.schema().as_arrow().clone()));
        }
        let schemas = schemas_of
            .iter()
            .map(|s| shuffle::schema_to_bytes(s).expect("an encoded schema"))
            .collect();

        let mut blocks = vec![rich_batch];
        for sql in [
            "SELECT * FROM nation",
            "SELECT * FROM lineitem LIMIT 20",
            "SELECT * FROM orders LIMIT 10",
        ] {
            let batches = ctx
                .sql(sql)
                .await
                .expect("a query")
                .collect()
                .await
                .expect("its rows");
            blocks.push(
                arrow::compute::concat_batches(&batches[0].schema(), &batches).expect("one batch"),
            );
        }
        let mut flight_blocks = Vec::new();
        let mut flight_refused = Vec::new();
        for (i, batch) in blocks.iter().enumerate() {
            flight_blocks.push(flight(batch, IpcWriteOptions::default(), false).await);
            if i < 2 {
                for compression in [CompressionType::LZ4_FRAME, CompressionType::ZSTD] {
                    let options = IpcWriteOptions::default()
                        .try_with_compression(Some(compression))
                        .expect("compression");
                    flight_refused.push(flight(batch, options, false).await);
                }
                flight_blocks.push(flight(batch, IpcWriteOptions::default(), true).await);
            }
        }
        // A block of two batches, and one with its schema alone.
        let two = arrow::compute::concat_batches(&blocks[1].schema(), [&blocks[1], &blocks[1]])
            .expect("two batches");
        flight_blocks.push(flight(&two.slice(0, 30), IpcWriteOptions::default(), false).await);
        flight_blocks.push(flight(&blocks[1].slice(0, 0), IpcWriteOptions::default(), false).await);

        let smallest_stage = physical_plans[0].clone();
        let largest_stage = physical_plans[physical_plans.len() - 1].clone();
        let worker_messages = worker_messages();
        let coordinator_messages = coordinator_messages(&smallest_stage, &largest_stage);
        let submissions = submissions(&logical_plans[0], &physical_plans[physical_plans.len() / 2]);
        Seeds {
            physical_plans,
            logical_plans,
            tickets,
            schemas,
            worker_messages,
            coordinator_messages,
            submissions,
            flight_blocks,
            flight_refused,
        }
    }
}

/// The tables and files plans are made over. Plans carry their files' paths and
/// modification times, so these are the same in every run and checkout: one
/// directory under the system's temporary directory, written once (to a directory of
/// its own, then renamed into place, so that concurrent runs agree) and then reused.
fn data_dir() -> PathBuf {
    let data = std::env::temp_dir().join(DATA_DIR);
    if data.join(DATA_COMPLETE).exists() {
        return data;
    }
    let building = tempfile::Builder::new()
        .prefix("drove-fuzz-data-building-")
        .tempdir()
        .expect("a temporary directory");
    let dir = building.path();
    Benchmark::Tpch
        .generate(0.001, &dir.join("tpch"), Format::Parquet)
        .expect("TPC-H parquet");
    Benchmark::Tpch
        .generate(0.001, &dir.join("tpch-csv"), Format::Csv)
        .expect("TPC-H CSV");
    let text = dir.join("text");
    std::fs::create_dir_all(&text).expect("a text directory");
    std::fs::write(
        text.join("a.txt"),
        "the quick brown fox\njumps over\nthe lazy dog\n",
    )
    .expect("a text file");
    std::fs::write(text.join("b.txt"), "a b c\nd e f g\n").expect("a text file");
    let csv = dir.join("csv");
    std::fs::create_dir_all(&csv).expect("a CSV directory");
    std::fs::write(csv.join("words.csv"), "word,n\nfox,1\ndog,2\n").expect("a CSV file");
    fix_modification_times(dir);
    std::fs::write(dir.join(DATA_COMPLETE), "").expect("the completion marker");
    // A leftover incomplete directory goes; a complete one another run renamed into
    // place first stays, and this one goes.
    if !data.join(DATA_COMPLETE).exists() {
        let _ = std::fs::remove_dir_all(&data);
    }
    let building = building.keep();
    if std::fs::rename(&building, &data).is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    assert!(
        data.join(DATA_COMPLETE).exists(),
        "cannot set up {}",
        data.display()
    );
    data
}

/// Sets every file under `dir` to one modification time.
fn fix_modification_times(dir: &Path) {
    let time = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for entry in std::fs::read_dir(dir).expect("a directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            fix_modification_times(&path);
        } else {
            std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(time))
                .expect("a modification time");
        }
    }
}

/// A block's Flight stream, as a worker's Flight service sends it.
async fn flight(batch: &RecordBatch, options: IpcWriteOptions, dictionaries: bool) -> Vec<u8> {
    let mut encoder = FlightDataEncoderBuilder::new()
        .with_schema(batch.schema())
        .with_options(options);
    if dictionaries {
        encoder = encoder.with_dictionary_handling(DictionaryHandling::Resend);
    }
    let messages: Vec<FlightData> = encoder
        .build(futures::stream::iter([Ok(batch.clone())]))
        .try_collect()
        .await
        .expect("a Flight stream");
    targets::flight_input(&messages)
}

/// A batch of many Arrow types: nested, dictionary, view, decimal and temporal ones.
fn rich_batch() -> (SchemaRef, RecordBatch) {
    let mut map = MapBuilder::new(None, StringBuilder::new(), Int64Builder::new());
    map.keys().append_value("k");
    map.values().append_value(1);
    map.append(true).expect("a map entry");
    map.append(false).expect("a null map");
    map.keys().append_value("j");
    map.values().append_null();
    map.append(true).expect("a map entry");
    let struct_array = StructArray::from(vec![
        (
            Arc::new(Field::new("a", DataType::Int32, true)),
            Arc::new(Int32Array::from(vec![Some(1), None, Some(3)])) as ArrayRef,
        ),
        (
            Arc::new(Field::new("b", DataType::Utf8, false)),
            Arc::new(StringArray::from(vec!["x", "y", "z"])) as ArrayRef,
        ),
    ]);
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "i8",
            Arc::new(Int8Array::from(vec![Some(-1), None, Some(127)])),
        ),
        ("u64", Arc::new(UInt64Array::from(vec![0, u64::MAX, 7]))),
        (
            "f64",
            Arc::new(Float64Array::from(vec![f64::NAN, -0.0, 1.5])),
        ),
        (
            "dec",
            Arc::new(
                Decimal128Array::from(vec![Some(12_345), None, Some(-1)])
                    .with_precision_and_scale(10, 2)
                    .expect("a decimal type"),
            ),
        ),
        ("date", Arc::new(Date32Array::from(vec![0, 19_000, -1]))),
        (
            "ts",
            Arc::new(TimestampMicrosecondArray::from(vec![0, 1, i64::MAX]).with_timezone("UTC")),
        ),
        (
            "bool",
            Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
        ),
        (
            "large",
            Arc::new(LargeStringArray::from(vec!["a", "", "ccc"])),
        ),
        (
            "view",
            Arc::new(StringViewArray::from(vec![
                "short",
                "a string longer than twelve bytes",
                "",
            ])),
        ),
        (
            "bin",
            Arc::new(BinaryArray::from(vec![&b"\x00\x01"[..], b"", b"\xff"])),
        ),
        (
            "fixed",
            Arc::new(
                FixedSizeBinaryArray::try_from_iter([[1u8, 2, 3, 4], [0; 4], [9; 4]].into_iter())
                    .expect("fixed-size binary"),
            ),
        ),
        (
            "list",
            Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
                Some(vec![Some(1), None]),
                None,
                Some(vec![]),
            ])),
        ),
        ("struct", Arc::new(struct_array)),
        (
            "dict",
            Arc::new(DictionaryArray::<Int32Type>::from_iter([
                Some("a"),
                None,
                Some("a"),
            ])),
        ),
        ("map", Arc::new(map.finish())),
    ];
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
        .collect();
    let metadata = [("origin".to_string(), "drove fuzz".to_string())].into();
    let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .expect("the rich batch");
    (schema, batch)
}

fn task_key() -> pb::TaskKey {
    pb::TaskKey {
        job_id: 3,
        stage_id: 1,
        partition: 2,
        attempt: 1,
    }
}

fn block_ticket() -> pb::BlockTicket {
    pb::BlockTicket {
        job_id: 3,
        stage_id: 1,
        map_partition: 2,
        reduce_partition: 0,
        attempt: 1,
        ..Default::default()
    }
}

fn worker_messages() -> Vec<Vec<u8>> {
    use pb::worker_message::Kind;
    let succeeded = pb::TaskStatus {
        task: Some(task_key()),
        outcome: Some(pb::task_status::Outcome::Succeeded(pb::TaskSucceeded {
            output_bytes: vec![100, 0, 4096],
            output_rows: vec![3, 0, 70],
            local_read_bytes: 10,
            remote_read_bytes: 20,
            elapsed_ms: 1234,
            counters: [("invalid_utf8_lines".to_string(), 2)].into(),
            spilled_bytes: 1 << 20,
            spill_count: 1,
            memory_bytes: 4096,
            peak_memory_bytes: 8192,
        })),
    };
    let failed = pb::TaskStatus {
        task: Some(task_key()),
        outcome: Some(pb::task_status::Outcome::Failed(pb::TaskFailed {
            message: "fetching block job-3/stage-0/map-1/reduce-2#0: connection refused".into(),
            kind: pb::ErrorKind::Transient as i32,
            fetch: Some(pb::FetchFailure {
                stage_id: 0,
                map_partition: 1,
                worker_id: 9,
            }),
        })),
    };
    [
        Kind::Register(pb::RegisterWorker {
            flight_addr: "127.0.0.1:50051".into(),
            slots: 2,
            task_memory_bytes: 1 << 28,
            node_id: "node-0123456789abcdef".into(),
            held_cluster_id: 77,
            held: vec![pb::HeldOutput {
                task: Some(task_key()),
                rows: 10,
                bytes: 1 << 10,
            }],
            zone: "rack-1".into(),
            chunks: vec![1, u64::MAX],
            stores_chunks: true,
        }),
        Kind::Heartbeat(pb::Heartbeat {
            statuses: vec![succeeded, failed],
            free_slots: 1,
            memory: Some(pb::MemoryStats {
                budget_bytes: 1 << 30,
                block_bytes: 1 << 20,
                execution_bytes: 1 << 21,
                peak_bytes: 1 << 22,
                disk_bytes: 0,
                spilled_bytes_total: 5,
                spill_count: 1,
            }),
            ..Default::default()
        }),
        Kind::Heartbeat(pb::Heartbeat::default()),
        Kind::Drain(pb::Drain {}),
    ]
    .into_iter()
    .map(|kind| pb::WorkerMessage { kind: Some(kind) }.encode_to_vec())
    .collect()
}

fn coordinator_messages(small_plan: &[u8], large_plan: &[u8]) -> Vec<Vec<u8>> {
    use pb::coordinator_message::Kind;
    let launch = |plan: &[u8], output: pb::OutputMode| {
        Kind::Launch(pb::LaunchTask {
            task: Some(task_key()),
            plan: plan.to_vec(),
            output: output as i32,
            inputs: vec![pb::StageInput {
                stage_id: 0,
                outputs: vec![pb::MapOutput {
                    partition: 0,
                    attempt: 0,
                    worker_id: 1,
                    flight_addr: "127.0.0.1:50051".into(),
                    job_id: 3,
                    stage_id: 0,
                }],
                partitions: 1,
            }],
            // One setting only: a map's order would differ from run to run.
            settings: [(
                "datafusion.execution.target_partitions".to_string(),
                "2".to_string(),
            )]
            .into(),
            reads_to: 2,
        })
    };
    [
        Kind::Registered(pb::Registered {
            worker_id: 7,
            heartbeat_interval_ms: 1000,
            cluster_id: 77,
            ticket_key: vec![3; 32],
            term: 4,
        }),
        Kind::DropOutputs(pb::DropOutputs {
            outputs: vec![task_key()],
        }),
        launch(small_plan, pb::OutputMode::Single),
        launch(large_plan, pb::OutputMode::RepartitionRoot),
        Kind::Release(pb::ReleaseJobBlocks { job_id: 3 }),
        Kind::Kill(task_key()),
        Kind::Drained(pb::Drained {}),
        Kind::ReleaseCache(pb::ReleaseCache { cache_id: 2 }),
        Kind::Adopt(pb::AdoptBlocks {
            cache_id: 2,
            blocks: vec![block_ticket(), block_ticket()],
        }),
        Kind::Drop(pb::DropBlocks {
            blocks: vec![block_ticket()],
        }),
    ]
    .into_iter()
    .map(|kind| pb::CoordinatorMessage { kind: Some(kind) }.encode_to_vec())
    .collect()
}

fn submissions(logical_plan: &[u8], physical_plan: &[u8]) -> Vec<Vec<u8>> {
    use pb::submit_job_request::Query;
    let tables = vec![
        pb::TableSpec {
            name: "lineitem".into(),
            path: "/data/tpch/lineitem.parquet".into(),
            format: String::new(),
        },
        pb::TableSpec {
            name: "words".into(),
            path: "/data/words/".into(),
            format: "csv".into(),
        },
    ];
    [
        (
            Query::Sql(Benchmark::Tpch.query(3).expect("q3").to_string()),
            "",
            false,
        ),
        (Query::Sql("SELECT 1".into()), "t", false),
        (Query::LogicalPlan(logical_plan.to_vec()), "", true),
        (Query::PhysicalPlan(physical_plan.to_vec()), "", false),
    ]
    .into_iter()
    .map(|(query, cache_as, detached)| {
        pb::SubmitJobRequest {
            query: Some(query),
            tables: tables.clone(),
            name: "fuzz".into(),
            cache_as: cache_as.into(),
            detached,
            priority: if detached { -3 } else { 7 },
            request_id: if detached { 0 } else { 0x5eed },
        }
        .encode_to_vec()
    })
    .collect()
}

// ------------------------------------------------------------------ regressions
//
// Inputs the fuzzing found that stopped a process or panicked in drove, made directly.

/// A stream of Arrow IPC messages with message `n`'s claimed body length set to
/// `claimed` (its bytes left as they are).
fn claim_body_length(ipc: &[u8], n: usize, claimed: i64) -> Vec<u8> {
    let out = ipc.to_vec();
    let mut at = 0;
    for i in 0.. {
        assert_eq!(out[at..at + 4], [0xff; 4], "a continuation marker");
        let meta_len =
            i32::from_le_bytes(out[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        let meta = at + 8..at + 8 + meta_len;
        let body = arrow::ipc::root_as_message(&out[meta.clone()])
            .expect("an IPC message")
            .bodyLength();
        if i == n {
            // The field is where the body length is written and changing it changes it.
            for start in meta.clone() {
                if out[start..start + 8] != body.to_le_bytes() {
                    continue;
                }
                let mut patched = out.clone();
                patched[start..start + 8].copy_from_slice(&claimed.to_le_bytes());
                if arrow::ipc::root_as_message(&patched[meta.clone()])
                    .is_ok_and(|m| m.bodyLength() == claimed)
                {
                    return patched;
                }
            }
            panic!("no body length found in message {n}");
        }
        at = meta.end + body as usize;
    }
    unreachable!()
}

#[test]
fn fuzz_found_a_plan_whose_in_memory_table_claims_a_huge_body() {
    use datafusion_proto::protobuf;
    // arrow-ipc allocated the claimed 2^55 bytes before reading them, and the failed
    // allocation aborted the process.
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::UInt64, false)]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![Arc::new(UInt64Array::from(vec![1, 2, 3]))],
    )
    .expect("a batch");
    let mut ipc = Vec::new();
    let mut writer =
        arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &schema).expect("an IPC writer");
    writer.write(&batch).expect("a batch written");
    writer.finish().expect("the stream finished");
    drop(writer);
    let node = protobuf::PhysicalPlanNode {
        physical_plan_type: Some(protobuf::physical_plan_node::PhysicalPlanType::MemoryScan(
            protobuf::MemoryScanExecNode {
                partitions: vec![claim_body_length(&ipc, 1, 1 << 55)],
                ..Default::default()
            },
        )),
    };
    let e = codec::plan_from_bytes(&node.encode_to_vec(), targets::setup())
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("claims a body of 36028797018963968 bytes"),
        "{e}"
    );
}

#[test]
fn fuzz_found_a_compressed_block() {
    // arrow-ipc allocated the uncompressed length an LZ4 or ZSTD buffer claims, and a
    // failed allocation aborted the process.
    let (_, batch) = rich_batch();
    let options = IpcWriteOptions::default()
        .try_with_compression(Some(CompressionType::LZ4_FRAME))
        .expect("compression");
    let messages: Vec<FlightData> = futures::executor::block_on(
        FlightDataEncoderBuilder::new()
            .with_options(options)
            .build(futures::stream::iter([Ok(batch)]))
            .try_collect(),
    )
    .expect("a Flight stream");
    let decoded: Vec<_> = futures::executor::block_on(
        shuffle::decode_block(futures::stream::iter(messages.into_iter().map(Ok)))
            .collect::<Vec<_>>(),
    );
    let e = decoded
        .into_iter()
        .find_map(Result::err)
        .expect("an error")
        .to_string();
    assert!(e.contains("compressed"), "{e}");
}

#[test]
fn fuzz_found_plans_the_planner_cannot_cut() {
    use datafusion::physical_plan::Partitioning;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion::physical_plan::repartition::RepartitionExec;
    use drove_exec::shuffle::{ReadMode, ShuffleReaderExec};
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::UInt64, false)]));
    // A reader names a stage of the plan it came from: indexing the stages by it
    // panicked.
    let reader = Arc::new(ShuffleReaderExec::new(
        5,
        ReadMode::PerMap,
        2,
        Arc::clone(&schema),
    ));
    let e = planner::split(reader).expect_err("refused").to_string();
    assert!(e.contains("ShuffleReaderExec"), "{e}");
    // A shuffle into no partitions made a reader of none, which asserted.
    let shuffle = RepartitionExec::try_new(
        Arc::new(EmptyExec::new(schema)),
        Partitioning::RoundRobinBatch(0),
    )
    .expect("DataFusion makes it");
    let e = planner::split(Arc::new(shuffle))
        .expect_err("refused")
        .to_string();
    assert!(e.contains("no partitions"), "{e}");
}
