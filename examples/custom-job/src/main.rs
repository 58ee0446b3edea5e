//! `my-engine`: the `drove` commands plus a job of our own, `line-lengths`, which counts
//! how many lines have each length.
//!
//! The same binary runs everywhere:
//!
//! ```sh
//! my-engine coordinator --bind 127.0.0.1:7070
//! my-engine worker --coordinator 127.0.0.1:7070
//! my-engine mapreduce line-lengths --input corpus/ --output lengths --coordinator 127.0.0.1:7070
//! my-engine mapreduce line-lengths --input corpus/ --output lengths --local 2
//! ```

use drove_client::{MapReduce, Record};

/// Counts lines by their length in characters.
struct LineLengths;

impl MapReduce for LineLengths {
    type Key = u64;
    type Value = u64;
    type Output = u64;

    fn map(&self, record: &Record<'_>, emit: &mut impl FnMut(&u64, &u64)) {
        emit(&(record.text.chars().count() as u64), &1);
    }

    const COMBINES: bool = true;

    fn combine(&self, _length: &u64, count: &mut u64, more: &u64) -> bool {
        *count += more;
        true
    }

    fn reduce(&self, _length: &u64, counts: Vec<u64>, emit: &mut dyn FnMut(u64)) {
        emit(counts.iter().sum());
    }
}

fn main() -> std::process::ExitCode {
    drove_client::register("line-lengths", LineLengths);
    drove::main()
}
