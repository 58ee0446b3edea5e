//! `drove gen text`: deterministic text with Zipf-distributed words.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use drove_core::rng::SplitMix64 as Rng;

/// Distinct words in the generated vocabulary.
const VOCABULARY: usize = 20_000;
/// The largest corpus `drove gen text` writes.
pub const SIZE_MAX: u64 = 1 << 40;

/// Word `i` of the vocabulary: syllables spelled from its index.
fn word(i: usize) -> String {
    const SYLLABLES: [&str; 16] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "da", "fe", "gu", "hi", "jo",
        "be",
    ];
    let mut n = i + 1;
    let mut w = String::new();
    while n > 0 {
        w.push_str(SYLLABLES[n % 16]);
        n /= 16;
    }
    w
}

/// Writes `files` files of about `size / files` bytes each into `out`; returns them.
pub fn generate(size: u64, files: usize, out: &Path, seed: u64) -> Result<Vec<PathBuf>> {
    if size == 0 || size > SIZE_MAX {
        bail!("--size {size} is out of range; use 1 to {SIZE_MAX} bytes");
    }
    if files == 0 || files as u64 > size {
        bail!("--files {files} is out of range; use 1 to --size");
    }
    let vocabulary: Vec<String> = (0..VOCABULARY).map(word).collect();
    // Zipf with exponent 1: P(rank k) ∝ 1/k.
    let mut cdf = Vec::with_capacity(VOCABULARY);
    let mut total = 0.0;
    for k in 1..=VOCABULARY {
        total += 1.0 / k as f64;
        cdf.push(total);
    }
    std::fs::create_dir_all(out)?;
    let per_file = size / files as u64;
    let mut paths = Vec::with_capacity(files);
    for f in 0..files {
        let mut rng = Rng(seed ^ (f as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let target = if f == files - 1 {
            size - per_file * (files as u64 - 1)
        } else {
            per_file
        };
        let path = out.join(format!("part-{f:05}.txt"));
        let tmp = path.with_extension("txt.tmp");
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut written = 0u64;
        let mut line = String::new();
        while written < target {
            line.clear();
            let words = 4 + (rng.next_u64() % 12) as usize;
            for i in 0..words {
                let u = rng.unit() * total;
                let rank = cdf.partition_point(|c| *c < u).min(VOCABULARY - 1);
                let w = &vocabulary[rank];
                if i == 0 {
                    let mut chars = w.chars();
                    if let Some(first) = chars.next() {
                        line.extend(first.to_uppercase());
                        line.push_str(chars.as_str());
                    }
                } else {
                    line.push(' ');
                    line.push_str(w);
                }
                if rng.next_u64().is_multiple_of(13) {
                    line.push(',');
                }
            }
            line.push_str(".\n");
            let remaining = (target - written) as usize;
            let bytes = &line.as_bytes()[..line.len().min(remaining)];
            w.write_all(bytes)?;
            written += bytes.len() as u64;
        }
        w.flush()?;
        drop(w);
        std::fs::rename(&tmp, &path)?;
        paths.push(path);
    }
    Ok(paths)
}
