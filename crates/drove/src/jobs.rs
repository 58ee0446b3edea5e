//! The MapReduce jobs built into the `drove` binary.

use drove_client::{MapReduce, Partitioner, Record};
use drove_exec::mapreduce::{JobArgs, register, register_with_args};

/// Registers `wordcount`, `inverted-index`, `grep` and `sort`.
pub fn register_builtin() {
    register("wordcount", WordCount);
    register("inverted-index", InvertedIndex);
    register_with_args("grep", Grep::from_args);
    register("sort", Sort);
}

/// The words of a text: maximal runs of Unicode alphanumeric characters, lowercased.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Counts each word.
pub struct WordCount;

impl MapReduce for WordCount {
    type Key = String;
    type Value = u64;
    type Output = u64;

    fn map(&self, record: &Record<'_>, emit: &mut dyn FnMut(String, u64)) {
        for word in words(record.text) {
            emit(word, 1);
        }
    }

    fn combine(&self, _key: &String, values: &[u64]) -> Option<u64> {
        Some(values.iter().sum())
    }

    fn reduce(&self, _key: &String, values: Vec<u64>, emit: &mut dyn FnMut(u64)) {
        emit(values.iter().sum());
    }
}

/// Maps each word to the sorted list of files that contain it.
pub struct InvertedIndex;

impl MapReduce for InvertedIndex {
    type Key = String;
    type Value = String;
    type Output = Vec<String>;

    fn map(&self, record: &Record<'_>, emit: &mut dyn FnMut(String, String)) {
        let mut seen = std::collections::HashSet::new();
        for word in words(record.text) {
            if seen.insert(word.clone()) {
                emit(word, record.file.to_string());
            }
        }
    }

    fn reduce(&self, _key: &String, mut files: Vec<String>, emit: &mut dyn FnMut(Vec<String>)) {
        files.sort_unstable();
        files.dedup();
        emit(files);
    }
}

/// Lines matching a regular expression (`--arg pattern=REGEX`), keyed by file and line.
pub struct Grep {
    pattern: regex::Regex,
}

impl Grep {
    fn from_args(args: &JobArgs) -> Result<Self, String> {
        let pattern = args
            .get("pattern")
            .ok_or("grep needs a pattern: pass --arg pattern=REGEX")?;
        let pattern =
            regex::Regex::new(pattern).map_err(|e| format!("the pattern does not parse: {e}"))?;
        Ok(Self { pattern })
    }
}

impl MapReduce for Grep {
    type Key = (String, u64);
    type Value = String;
    type Output = String;

    fn map(&self, record: &Record<'_>, emit: &mut dyn FnMut((String, u64), String)) {
        if self.pattern.is_match(record.text) {
            emit(
                (record.file.to_string(), record.line),
                record.text.to_string(),
            );
        }
    }

    fn reduce(&self, _key: &(String, u64), lines: Vec<String>, emit: &mut dyn FnMut(String)) {
        lines.into_iter().for_each(emit);
    }
}

/// Sorts `KEY<TAB>VALUE` records by key (a line without a tab is all key), with range
/// partitioning, so the part files read in order are globally sorted.
pub struct Sort;

impl MapReduce for Sort {
    type Key = String;
    type Value = String;
    type Output = String;

    fn map(&self, record: &Record<'_>, emit: &mut dyn FnMut(String, String)) {
        let (key, value) = record.text.split_once('\t').unwrap_or((record.text, ""));
        emit(key.to_string(), value.to_string());
    }

    fn reduce(&self, _key: &String, mut values: Vec<String>, emit: &mut dyn FnMut(String)) {
        values.sort_unstable();
        values.into_iter().for_each(emit);
    }

    fn partitioner(&self) -> Partitioner {
        Partitioner::Range
    }
}

#[cfg(test)]
mod tests {
    use super::words;

    #[test]
    fn words_are_lowercased_alphanumeric_runs() {
        let w: Vec<String> = words("Hello, wörld! Über-cool x2 ... 42").collect();
        assert_eq!(w, ["hello", "wörld", "über", "cool", "x2", "42"]);
    }
}
