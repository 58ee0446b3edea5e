"""MapReduce with Python functions (``session.mapreduce``) equals the built-in job
and plain Python; its output commits as the built-in jobs' does; bad input is refused."""

import collections
import re
import subprocess

import pyarrow as pa
import pytest

import drove
from conftest import drove_command


def words(line):
    """The built-in word count's words: runs of letters and digits, lowercased."""
    for word in re.findall(r"[^\W_]+", line):
        yield word.lower(), 1


def total(word, counts):
    return sum(counts)


def counts_in(result):
    """The `word<TAB>count` lines of a job's part files, as a dict."""
    found = {}
    for path in result["files"]:
        for line in open(path, encoding="utf-8"):
            word, count = line.rstrip("\n").split("\t")
            assert word not in found, f"{word} in two part files"
            found[word] = int(count)
    return found


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    subprocess.run(
        [drove_command(), "gen", "text", "--size", "3000000", "--files", "3", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


def test_python_word_count_equals_the_built_in_one_and_plain_python(session, corpus, tmp_path):
    built_in = session.mapreduce(corpus, tmp_path / "built-in", job="wordcount", reducers=3)
    python = session.mapreduce(corpus, tmp_path / "python", mapper=words, reducer=total, combiner=total, reducers=3)
    uncombined = session.mapreduce(corpus, tmp_path / "uncombined", mapper=words, reducer=total)

    expected = collections.Counter()
    for path in sorted(corpus.iterdir()):
        for line in open(path, encoding="utf-8"):
            expected.update(w for w, _ in words(line))
    assert len(expected) > 1000
    assert counts_in(built_in) == dict(expected)
    assert counts_in(python) == dict(expected)
    assert counts_in(uncombined) == dict(expected)
    assert python["records"] == len(expected)
    # The combiner ran: it folded each batch's counts before the shuffle.
    assert python["shuffled_bytes"] * 2 < uncombined["shuffled_bytes"], (python, uncombined)
    assert len(python["files"]) == 3
    assert (tmp_path / "python" / "_SUCCESS").exists()


def test_a_reducer_may_yield_several_outputs_of_its_own_type(session, corpus, tmp_path):
    def first_letters(line):
        for word, _ in words(line):
            yield word[0], word

    def longest_two(letter, found):
        yield from sorted(set(found), key=lambda w: (-len(w), w))[:2]

    result = session.mapreduce(
        corpus, tmp_path / "longest", mapper=first_letters, reducer=longest_two, value_type=pa.string()
    )
    got = collections.defaultdict(list)
    for path in result["files"]:
        for line in open(path, encoding="utf-8"):
            letter, word = line.rstrip("\n").split("\t")
            got[letter].append(word)

    every = collections.defaultdict(set)
    for path in corpus.iterdir():
        for line in open(path, encoding="utf-8"):
            for word, _ in words(line):
                every[word[0]].add(word)
    assert {k: sorted(v) for k, v in got.items()} == {
        k: sorted(sorted(v, key=lambda w: (-len(w), w))[:2]) for k, v in every.items()
    }

    # Integer keys, float outputs.
    def lengths(line):
        for word, _ in words(line):
            yield len(word), 1

    def share(length, counts):
        return sum(counts) / 1000.0

    result = session.mapreduce(
        corpus, tmp_path / "lengths", mapper=lengths, reducer=share, key_type=pa.int64(), output_type=pa.float64()
    )
    got = {}
    for path in result["files"]:
        for line in open(path, encoding="utf-8"):
            length, value = line.rstrip("\n").split("\t")
            got[int(length)] = float(value)
    counted = collections.Counter()
    for path in corpus.iterdir():
        for line in open(path, encoding="utf-8"):
            counted.update(len(w) for w, _ in words(line))
    assert got == {k: v / 1000.0 for k, v in counted.items()}


def test_mapreduce_bad_input(session, corpus, tmp_path):
    done = session.mapreduce(corpus, tmp_path / "once", mapper=words, reducer=total)
    with pytest.raises(drove.DroveError, match="exists"):
        session.mapreduce(corpus, tmp_path / "once", mapper=words, reducer=total)
    # overwrite replaces it.
    again = session.mapreduce(corpus, tmp_path / "once", mapper=words, reducer=total, overwrite=True)
    assert again["records"] == done["records"]

    with pytest.raises(drove.DroveError, match="does not exist|no such|not found"):
        session.mapreduce(tmp_path / "missing", tmp_path / "out1", mapper=words, reducer=total)
    with pytest.raises(drove.DroveError, match="give mapper"):
        session.mapreduce(corpus, tmp_path / "out2", mapper=words)
    with pytest.raises(drove.DroveError, match="pass those instead"):
        session.mapreduce(corpus, tmp_path / "out7", job="python")
    with pytest.raises(drove.DroveError, match="closure"):
        session.mapreduce(corpus, tmp_path / "out8", mapper=words, reducer=total, args={"a": "1"})
    with pytest.raises(drove.DroveError, match="not both"):
        session.mapreduce(corpus, tmp_path / "out3", job="wordcount", mapper=words, reducer=total)
    with pytest.raises(drove.DroveError, match="pyarrow type"):
        session.mapreduce(corpus, tmp_path / "out4", mapper=words, reducer=total, key_type="str")
    with pytest.raises(drove.DroveError, match="reducers"):
        session.mapreduce(corpus, tmp_path / "out5", mapper=words, reducer=total, reducers=0)
    with pytest.raises(drove.DroveError, match="unknown output format"):
        session.mapreduce(corpus, tmp_path / "out6", mapper=words, reducer=total, format="xml")

    # A mapper that raises fails the job with its traceback; no output is left.
    def broken(line):
        raise KeyError("no such field")

    with pytest.raises(drove.JobFailed, match="no such field"):
        session.mapreduce(corpus, tmp_path / "broken", mapper=broken, reducer=total)
    assert not (tmp_path / "broken" / "_SUCCESS").exists()
    assert not list((tmp_path / "broken").glob("part-*"))

    # Values of the wrong type fail the job, saying what pyarrow could not convert.
    with pytest.raises(drove.JobFailed, match="convert"):
        session.mapreduce(corpus, tmp_path / "typed", mapper=lambda line: [("k", "not a number")], reducer=total)
