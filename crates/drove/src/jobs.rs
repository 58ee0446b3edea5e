//! The MapReduce jobs built into the `drove` binary.

use drove_client::{MapReduce, Partitioner, Record};
use drove_exec::mapreduce::{JobArgs, register, register_with_args};

/// Registers `wordcount`, `inverted-index`, `grep` and `sort`, and `python`, whose
/// functions are written in Python.
pub fn register_builtin() {
    drove_exec::mapreduce::python::register();
    register("wordcount", WordCount);
    register("inverted-index", InvertedIndex);
    register_with_args("grep", Grep::from_args);
    register("sort", Sort);
}

/// What a byte is to a word: it separates words (0: ASCII that is not alphanumeric),
/// or it is part of one: ASCII lowercase or a digit, ASCII uppercase, or a byte of a
/// non-ASCII character (which may be a letter or not).
const SEPARATOR: u8 = 0;
const LOWER: u8 = 1;
const UPPER: u8 = 2;
const NON_ASCII: u8 = 4;
const CLASS: [u8; 256] = {
    let mut class = [SEPARATOR; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        class[b] = if !c.is_ascii() {
            NON_ASCII
        } else if c.is_ascii_uppercase() {
            UPPER
        } else if c.is_ascii_alphanumeric() {
            LOWER
        } else {
            SEPARATOR
        };
        b += 1;
    }
    class
};

/// The longest ASCII word lowercased on the stack; a longer one is lowercased into a
/// new string.
const SHORT_WORD: usize = 64;

/// Calls `f` with each word of `text`: each maximal run of Unicode alphanumeric
/// characters, lowercased. An ASCII word is borrowed from the text where it is
/// lowercase already and lowercased on the stack otherwise, so it costs no allocation;
/// the text is read once, a byte at a time.
pub fn for_each_word(text: &str, mut f: impl FnMut(&str)) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && CLASS[bytes[i] as usize] == SEPARATOR {
            i += 1;
        }
        let start = i;
        let mut seen = SEPARATOR;
        while i < bytes.len() && CLASS[bytes[i] as usize] != SEPARATOR {
            seen |= CLASS[bytes[i] as usize];
            i += 1;
        }
        // Separators are ASCII, so the run starts and ends at character boundaries.
        let run = &text[start..i];
        if seen & NON_ASCII != 0 {
            for word in run.split(|c: char| !c.is_alphanumeric()) {
                if !word.is_empty() {
                    f(&word.to_lowercase());
                }
            }
        } else if seen & UPPER != 0 {
            let mut short = [0u8; SHORT_WORD];
            match short.get_mut(..run.len()) {
                Some(lower) => {
                    lower.copy_from_slice(run.as_bytes());
                    lower.make_ascii_lowercase();
                    // ASCII, so always UTF-8.
                    if let Ok(word) = std::str::from_utf8(lower) {
                        f(word);
                    }
                }
                None => f(&run.to_ascii_lowercase()),
            }
        } else if !run.is_empty() {
            f(run);
        }
    }
}

/// Counts each word.
pub struct WordCount;

impl MapReduce for WordCount {
    type Key = String;
    type Value = u64;
    type Output = u64;

    fn map(&self, record: &Record<'_>, emit: &mut impl FnMut(&str, &u64)) {
        for_each_word(record.text, |word| emit(word, &1));
    }

    const COMBINES: bool = true;

    fn combine(&self, _key: &str, held: &mut u64, value: &u64) -> bool {
        *held += value;
        true
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

    fn map(&self, record: &Record<'_>, emit: &mut impl FnMut(&str, &str)) {
        let mut seen = std::collections::HashSet::new();
        for_each_word(record.text, |word| {
            if !seen.contains(word) {
                seen.insert(word.to_string());
                emit(word, record.file);
            }
        });
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

    fn map(&self, record: &Record<'_>, emit: &mut impl FnMut(&(String, u64), &str)) {
        if self.pattern.is_match(record.text) {
            emit(&(record.file.to_string(), record.line), record.text);
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

    fn map(&self, record: &Record<'_>, emit: &mut impl FnMut(&str, &str)) {
        let (key, value) = record.text.split_once('\t').unwrap_or((record.text, ""));
        emit(key, value);
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
    use super::for_each_word;

    fn words(text: &str) -> Vec<String> {
        let mut words = Vec::new();
        for_each_word(text, |w| words.push(w.to_string()));
        words
    }

    #[test]
    fn words_are_lowercased_alphanumeric_runs() {
        assert_eq!(
            words("Hello, wörld! Über-cool x2 ... 42"),
            ["hello", "wörld", "über", "cool", "x2", "42"]
        );
        assert_eq!(
            words("  The CAT, the cat.\tX"),
            ["the", "cat", "the", "cat", "x"]
        );
        assert_eq!(words("ΣΑΣ Ǆemal"), ["σας", "ǆemal"]);
        assert_eq!(words("naïve Café—X,y"), ["naïve", "café", "x", "y"]);
        assert!(words(" ,. ").is_empty());
        let long = "Ab".repeat(40);
        assert_eq!(
            words(&format!("{long} x")),
            [long.to_lowercase(), "x".into()]
        );
    }
}
