import os

import numpy as np
import pytest

from relpos.data import (
    IGNORE_INDEX,
    TASKS,
    ByteTokenizer,
    CharTokenizer,
    LMData,
    default_corpus,
    exact_match,
    get_task,
    load_text,
)


# ------------------------------------------------------------- tokenizers
@pytest.mark.parametrize("text", ["", "hello", "héllo wörld ∑ 🙂\n\t", "a" * 1000])
def test_byte_tokenizer_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int64
    assert ids.shape == (len(text.encode("utf-8")),)
    assert ids.size == 0 or (ids.min() >= 0 and ids.max() < 256)
    assert tok.decode(ids) == text


def test_byte_tokenizer_known_ids_and_bad_input():
    tok = ByteTokenizer()
    assert tok.encode("Az").tolist() == [65, 122]
    assert tok.encode("é").tolist() == [0xC3, 0xA9]
    with pytest.raises(TypeError, match="str"):
        tok.encode(b"bytes")
    with pytest.raises(IndexError, match="256"):
        tok.decode([65, 300])


def test_char_tokenizer_round_trip_and_unknown():
    text = "the quick brown fox ∑"
    tok = CharTokenizer(text)
    assert tok.vocab_size == len(set(text))
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and tok.decode(ids) == text
    # ids follow sorted code points
    assert tok.encode(" ")[0] == 0
    with pytest.raises(ValueError, match="'Z'.*index 3"):
        tok.encode("theZ")
    tok2 = CharTokenizer(text, unknown="unk")
    assert tok2.vocab_size == tok.vocab_size + 1
    enc = tok2.encode("fZx🙂")
    assert enc[1] == tok2.unk_id and enc[3] == tok2.unk_id
    assert tok2.decode(enc) == "f\ufffdx\ufffd"
    with pytest.raises(ValueError, match="unknown"):
        CharTokenizer(text, unknown="ignore")
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer("")


# ------------------------------------------------------------------- text
def test_default_corpus_is_pydoc_topics():
    from pydoc_data.topics import topics
    text = default_corpus()
    assert text == default_corpus()
    assert len(text) > 100_000
    first = sorted(topics)[0]
    assert text.startswith(topics[first])
    assert "assert" in text and "lambda" in text


def test_load_text_errors(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("héllo\n", encoding="utf-8")
    assert load_text(good) == "héllo\n"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text(tmp_path / "missing.txt")
    with pytest.raises(IsADirectoryError, match="directory"):
        load_text(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_text(empty)
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\n")
    with pytest.raises(ValueError, match="empty"):
        load_text(blank)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="UTF-8.*byte 3"):
        load_text(latin)
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.txt"
        locked.write_text("x")
        locked.chmod(0)
        with pytest.raises(PermissionError, match="cannot be read"):
            load_text(locked)


# ----------------------------------------------------------------- LMData
def test_lmdata_split_is_deterministic_and_contiguous():
    text = default_corpus()
    a, b = LMData(text), LMData(text)
    ids = ByteTokenizer().encode(text)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    assert a.train.size + a.val.size == ids.size
    assert abs(a.val.size - 0.1 * ids.size) <= 1
    assert np.array_equal(np.concatenate([a.train, a.val]), ids)
    assert a.vocab_size == 256


def test_lmdata_batch_shapes_shift_and_seed():
    data = LMData(np.arange(1000) % 97, val_fraction=0.2)
    assert data.vocab_size == 97
    x, y = data.batch(5, 12, np.random.default_rng(3))
    assert x.shape == y.shape == (5, 12) and x.dtype == y.dtype == np.int64
    assert np.array_equal((x + 1) % 97, y)  # the data is a counter mod 97
    x2, _ = data.batch(5, 12, np.random.default_rng(3))
    assert np.array_equal(x, x2)
    x3, _ = data.batch(5, 12, np.random.default_rng(4))
    assert not np.array_equal(x, x3)
    # training windows never reach the validation tokens
    xs, ys = data.batch(2000, 12, np.random.default_rng(0))
    assert ys.max() < 97 and x.min() >= 0
    assert (np.asarray(xs) >= 0).all()


def test_lmdata_train_len_too_long():
    data = LMData("abcdefghij" * 10)  # 100 tokens: 90 train, 10 val
    with pytest.raises(ValueError, match=r"seq_len 200 .*90 tokens"):
        data.batch(2, 200, 0)
    with pytest.raises(ValueError, match=r"seq_len 50 .*10 tokens"):
        data.eval_windows(50)


def test_eval_windows_non_overlapping_and_sliding():
    ids = np.arange(101)
    data = LMData(ids, val_fraction=0.5)
    val = data.val
    x, y = data.eval_windows(10)
    assert x.shape == ((val.size - 1) // 10, 10)
    assert np.array_equal(x.ravel(), val[:x.size])
    assert np.array_equal(y.ravel(), val[1:x.size + 1])
    xs, ys = data.eval_windows(10, sliding=True, stride=4)
    assert xs.shape[1] == 10
    # every scored target is scored once, in order, and is the true next token
    scored = ys[ys != IGNORE_INDEX]
    assert np.array_equal(scored, val[1:1 + scored.size])
    assert (ys[0] != IGNORE_INDEX).all()
    assert (ys[1:, :6] == IGNORE_INDEX).all() and (ys[1:, 6:] != IGNORE_INDEX).all()
    # max_tokens keeps the same prefix
    xm, _ = data.eval_windows(5, max_tokens=20)
    assert xm.shape == (4, 5) and np.array_equal(xm.ravel(), val[:20])
    with pytest.raises(ValueError, match="stride"):
        data.eval_windows(10, sliding=True, stride=11)


def test_lmdata_bad_inputs():
    with pytest.raises(ValueError, match="val_fraction"):
        LMData("hello world", val_fraction=1.5)
    with pytest.raises(ValueError, match="at least 4"):
        LMData("ab")
    with pytest.raises(TypeError, match="integer"):
        LMData(np.ones(10))
    with pytest.raises(IndexError, match="vocabulary"):
        LMData(np.array([1, 2, 300, 4, 5]), tokenizer=ByteTokenizer())
    with pytest.raises(TypeError, match="batch_size"):
        LMData("hello world").batch(2.5, 3, 0)


# ------------------------------------------------------------------ tasks
@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_shapes_ignore_and_determinism(name):
    task = get_task(name)
    for length in (1, 3, 7):
        inp, tgt = task.sample(6, length, np.random.default_rng(1))
        T = task.seq_len(length)
        assert inp.shape == tgt.shape == (6, T)
        assert inp.dtype == tgt.dtype == np.int64
        assert inp.min() >= 0 and inp.max() < task.vocab_size
        # targets are the inputs shifted by one wherever scored
        scored = tgt != IGNORE_INDEX
        assert np.array_equal(tgt[:, :-1][scored[:, :-1]], inp[:, 1:][scored[:, :-1]])
        # the prompt and the separator are never scored; the answer and <end> are
        sep_pos = np.argmax(inp == task.sep_id, axis=1)
        assert (sep_pos == sep_pos[0]).all()
        s = sep_pos[0]
        assert (tgt[:, :s] == IGNORE_INDEX).all()
        assert (tgt[:, s:] != IGNORE_INDEX).all()
        assert (tgt[:, -1] == task.end_id).all()
        again = task.sample(6, length, np.random.default_rng(1))
        assert np.array_equal(again[0], inp) and np.array_equal(again[1], tgt)
    other = task.sample(6, 7, np.random.default_rng(2))[0]
    assert not np.array_equal(other, task.sample(6, 7, np.random.default_rng(1))[0])


def _answer(task, inp, tgt):
    keep = tgt[0] != IGNORE_INDEX
    return [task.tokens[i] for i in tgt[0][keep][:-1]]


def test_task_answers_are_correct():
    rng = np.random.default_rng(0)
    copy, rev, srt = get_task("copy"), get_task("reverse"), get_task("sort")
    for task, fn in ((copy, lambda p: p), (rev, lambda p: p[::-1]),
                     (srt, lambda p: sorted(p, key=lambda s: int(s[1:])))):
        inp, tgt = task.sample(1, 9, rng)
        prompt = [task.tokens[i] for i in inp[0][:9]]
        assert _answer(task, inp, tgt) == fn(prompt)
    par = get_task("parity")
    inp, tgt = par.sample(1, 11, rng)
    bits = [int(par.tokens[i]) for i in inp[0][:11]]
    assert _answer(par, inp, tgt) == [str(sum(bits) % 2)]
    add = get_task("addition")
    inp, tgt = add.sample(1, 6, rng)
    toks = [add.tokens[i] for i in inp[0]]
    a = int("".join(toks[0:6])[::-1])
    b = int("".join(toks[7:13])[::-1])
    assert toks[6] == "+"
    assert int("".join(_answer(add, inp, tgt))[::-1]) == a + b
    rec = get_task("recall")
    inp, tgt = rec.sample(1, 5, rng)
    toks = [rec.tokens[i] for i in inp[0]]
    pairs = dict(zip(toks[0:10:2], toks[1:10:2]))
    assert len(pairs) == 5  # keys are distinct
    assert _answer(rec, inp, tgt) == [pairs[toks[10]]]


def test_task_train_and_test_lengths():
    task = get_task("copy", train_lengths=(2, 5), test_lengths=(10, 20))
    assert task.train_lengths == (2, 5) and task.test_lengths == (10, 20)
    assert max(task.test_lengths) > task.train_lengths[1]
    seen = {task.batch(2, np.random.default_rng(s))[0].shape[1] for s in range(40)}
    assert seen == {task.seq_len(n) for n in range(2, 6)}
    assert task.max_length_for(task.seq_len(7)) == 7
    assert task.max_length_for(task.seq_len(7) + 1) == 7
    for name in TASKS:
        t = get_task(name)
        assert min(t.test_lengths) > t.train_lengths[1]


def test_exact_match_known_cases():
    tgt = np.array([[IGNORE_INDEX, 3, 4], [IGNORE_INDEX, 5, 6], [IGNORE_INDEX, 1, 2]])
    pred = np.array([[9, 3, 4], [0, 5, 0], [7, 1, 2]])  # prompt positions don't matter
    assert exact_match(pred, tgt) == pytest.approx(2 / 3)
    logits = np.zeros((3, 3, 10))
    for b in range(3):
        for t in range(3):
            logits[b, t, pred[b, t]] = 1.0
    assert exact_match(logits, tgt) == pytest.approx(2 / 3)
    assert exact_match(np.where(tgt == IGNORE_INDEX, 0, tgt), tgt) == 1.0
    with pytest.raises(ValueError, match="shape"):
        exact_match(pred[:, :2], tgt)


def test_task_bad_inputs():
    with pytest.raises(ValueError, match="unknown task 'copie'.*addition, copy, parity, recall"):
        get_task("copie")
    with pytest.raises(ValueError, match="length"):
        get_task("copy").sample(2, 0, 0)
    with pytest.raises(ValueError, match="n_keys"):
        get_task("recall", n_keys=4).sample(2, 5, 0)
    with pytest.raises(ValueError, match="train_lengths"):
        get_task("copy", train_lengths=(5, 2))
    with pytest.raises(TypeError, match="rng"):
        get_task("copy").sample(2, 3, "seed")
    assert isinstance(get_task("associative-recall"), TASKS["recall"])


def test_load_text_is_bounded(tmp_path):
    """Issue 12, item 9: --text /dev/zero read without bound. A regular file is refused by its
    size before reading; a device or a pipe is read in chunks and refused one byte past the limit."""
    import os
    import threading

    from relpos.data import MAX_TEXT_BYTES
    assert MAX_TEXT_BYTES == 256 * 2 ** 20
    big = tmp_path / "big.txt"
    big.write_text("abcd" * 300)
    with pytest.raises(ValueError, match=r"larger than the limit of 1,000 bytes; it has 1,200 bytes"):
        load_text(big, max_bytes=1000)
    assert load_text(big, max_bytes=1200) == "abcd" * 300   # the limit itself is allowed
    with pytest.raises(ValueError, match=r"'/dev/zero' is larger than the limit of 4,096 bytes; stopped "
                                         r"reading there \(a device or a pipe\)"):
        load_text("/dev/zero", max_bytes=4096)
    # an endless pipe: the writer never stops on its own
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    stop = threading.Event()

    def writer():
        with open(fifo, "wb") as f:
            try:
                while not stop.is_set():
                    f.write(b"x" * 65536)
            except BrokenPipeError:
                pass
    t = threading.Thread(target=writer, daemon=True)
    t.start()
    with pytest.raises(ValueError, match=r"larger than the limit of 2 MiB; stopped reading there"):
        load_text(fifo, max_bytes=2 * 2 ** 20)
    stop.set()
    t.join(timeout=10)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_bytes must be a positive int"):
            load_text(big, max_bytes=bad)


def test_task_bos_token():
    rng = np.random.default_rng(1)
    for name in TASKS:
        plain, with_bos = get_task(name), get_task(name, bos=True)
        assert with_bos.vocab_size == plain.vocab_size + 1 and with_bos.tokens[-1] == "<bos>"
        assert with_bos.tokens[:-1] == plain.tokens  # every other id unchanged
        n = 3
        assert with_bos.seq_len(n) == plain.seq_len(n) + 1
        x0, y0 = plain.sample(4, n, np.random.default_rng(5))
        x1, y1 = with_bos.sample(4, n, np.random.default_rng(5))
        # the same problem, one token later
        assert np.all(x1[:, 0] == with_bos.bos_id) and y1[0, 0] == IGNORE_INDEX
        np.testing.assert_array_equal(x1[:, 1:], x0)
        np.testing.assert_array_equal(y1[:, 1:], y0)
    inp, tgt = get_task("copy", bos=True).sample(1, 4, rng)
    assert get_task("copy", bos=True).decode(inp[0]).split()[0] == "<bos>"
    with pytest.raises(TypeError, match="bos must be a bool"):
        get_task("copy", bos=1)


def test_task_linear_length_sampling():
    task = get_task("copy", train_lengths=(1, 4), length_sampling="linear")
    rng = np.random.default_rng(0)
    sizes = [(task.batch(1, rng)[0].shape[1] - 1) // 2 for _ in range(20000)]
    counts = np.bincount(sizes, minlength=5)[1:]
    # P(n) = n / 10 for n = 1..4
    np.testing.assert_allclose(counts / counts.sum(), [0.1, 0.2, 0.3, 0.4], atol=0.012)
    uni = get_task("copy", train_lengths=(1, 4))
    sizes = [(uni.batch(1, rng)[0].shape[1] - 1) // 2 for _ in range(8000)]
    np.testing.assert_allclose(np.bincount(sizes, minlength=5)[1:] / 8000, 0.25, atol=0.02)
    with pytest.raises(ValueError, match="length_sampling must be 'uniform' or 'linear'"):
        get_task("copy", length_sampling="square")


def _assert_curriculum(sizes, lo, hi, curriculum):
    """Batch b of a curriculum may reach lo + int((hi - lo) * (b + 1) / curriculum) at
    most, and after the curriculum the largest size is drawn."""
    assert all(s <= lo + int((hi - lo) * (b + 1) / curriculum) for b, s in enumerate(sizes[:curriculum]))
    assert max(sizes[curriculum:]) == hi


def test_task_curriculum_grows_the_largest_size():
    task = get_task("copy", train_lengths=(1, 9), curriculum=80)
    rng = np.random.default_rng(0)
    sizes = [(task.batch(1, rng)[0].shape[1] - 1) // 2 for _ in range(160)]
    # size 1 only for the first 9 batches
    assert all(s == 1 for s in sizes[:9])
    _assert_curriculum(sizes, 1, 9, 80)
    assert task.batches_drawn == 160
    # explicit lengths (evaluation) do not advance it
    task.batch(1, rng, lengths=(3, 3))
    assert task.batches_drawn == 160
    with pytest.raises(ValueError, match="curriculum must be >= 0"):
        get_task("copy", curriculum=-1)


def _operands(task, inp):
    """The two operands of addition problems, as ints (digits written least significant first)."""
    out = []
    for row in inp:
        toks = [task.tokens[i] for i in row if task.tokens[i] not in ("<bos>",)]
        plus = toks.index("+")
        sep = toks.index("<sep>")
        out.append((int("".join(toks[:plus])[::-1]), int("".join(toks[plus + 1:sep])[::-1]), plus))
    return out


def test_addition_pad_balances_digit_counts_at_one_width():
    task = get_task("addition", train_lengths=(2, 5), bos=True)
    assert task.pad
    rng = np.random.default_rng(0)
    small = total = 0
    for _ in range(60):
        inp, tgt = task.batch(8, rng)
        # every training problem is written at the largest size
        assert inp.shape == (8, task.seq_len(5))
        for r, (a, b, width) in enumerate(_operands(task, inp)):
            assert width == 5 and a < 10 ** 5 and b < 10 ** 5
            keep = tgt[r] != IGNORE_INDEX
            ans = "".join(task.tokens[i] for i in tgt[r][keep][:-1])
            assert len(ans) == 6 and int(ans[::-1]) == a + b
            small += (a < 100) + (b < 100)
            total += 2
    # digit counts 2..5 equally likely: P(operand < 100) = 1/4 + 3/4 * (chance of leading zeros) > 1/4
    assert 0.2 < small / total < 0.4
    # test problems keep two full-size operands: an operand < 10**(n-1) only by a leading zero (1 in 10)
    inp, _ = task.sample(400, 5, np.random.default_rng(1))
    ops = _operands(task, inp)
    frac = np.mean([a < 10 ** 4 for a, _, _ in ops] + [b < 10 ** 4 for _, b, _ in ops])
    assert 0.06 < frac < 0.14
    # pad=False: one size per batch, drawn from train_lengths, full-size operands
    plain = get_task("addition", train_lengths=(2, 5), bos=True, pad=False)
    widths = {plain.batch(2, np.random.default_rng(s))[0].shape[1] for s in range(40)}
    assert widths == {plain.seq_len(n) for n in range(2, 6)}
    with pytest.raises(TypeError, match="pad must be a bool"):
        get_task("addition", pad="yes")


def test_addition_pad_follows_curriculum_and_linear_sampling():
    task = get_task("addition", train_lengths=(1, 6), curriculum=50)
    rng = np.random.default_rng(0)
    widths = [(task.batch(2, rng)[0].shape[1] - 3) // 3 for _ in range(100)]
    assert widths[0] == 1 and widths[-1] == 6
    _assert_curriculum(widths, 1, 6, 50)
    # linear: each operand's digit count n is 1..4 with probability n / 10; its highest nonzero
    # digit sits at k <= n (the digits from k+1 to n drawn as 0, digit k not)
    lin = get_task("addition", train_lengths=(1, 4), length_sampling="linear")
    inp, _ = lin.batch(20000, np.random.default_rng(3))
    a = inp[:, :4] - lin.first_symbol
    highest = np.where(a.any(axis=1), 4 - np.argmax(a[:, ::-1] != 0, axis=1), 0)
    counts = np.bincount(highest, minlength=5)[1:] / len(highest)
    # P(highest nonzero digit = k) = sum_{n >= k} P(n) * P(digit k nonzero, all above it zero | n)
    p_n = np.array([0.1, 0.2, 0.3, 0.4])
    expect = [sum(p_n[n - 1] * 0.9 * 0.1 ** (n - k) for n in range(k, 5)) for k in range(1, 5)]
    np.testing.assert_allclose(counts, expect, atol=0.012)
