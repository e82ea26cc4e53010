"""ArrayRecord writer/reader and the Grain pipeline: order, slices, resume, padding, bad records."""
import numpy as np
import pytest
from array_record.python import array_record_module as arm

from w2v_jax import fileio
from w2v_jax.data import array_record as ar
from w2v_jax.data import pipeline, synthetic

N, L, V = 48, 8, 32


@pytest.fixture(scope="module")
def builder_dir(tmp_path_factory):
    return synthetic.write(str(tmp_path_factory.mktemp("data")), N, L, V, seed=0, num_eval=8)


def ids_of(batches):
    return [int(i) for b in batches for i, m in zip(b["id"], b["example_mask"]) if m]


def id_pipeline(builder_dir, **kw):
    """Pipeline keeping the record ids (transform adds the LM fields and keeps ``id``)."""
    t = synthetic.LMTransform(V, L)
    kw.setdefault("batch_size", 4)
    return pipeline.build_pipeline(ar.open_split(builder_dir, "train"), spec=t.spec(),
                                   transform=lambda r: {**t(r), "id": r["id"]}, **kw)


def test_array_record_roundtrip_and_feature_checks(tmp_path):
    rows = [{"x": np.full((2, 3), i, np.float32), "blob": b"\x89PNG%d" % i, "text": f"q{i}",
             "ids": np.arange(i + 1, dtype=np.int32)} for i in range(5)]
    d = ar.write_dataset(str(tmp_path), "roundtrip",
                         {"x": ar.tensor_feature((2, 3), np.float32), "blob": ar.bytes_feature(),
                          "text": ar.text_feature(), "ids": ar.tensor_feature((None,), np.int32)},
                         {"train": rows})
    src = ar.open_split(d, "train")
    got = sorted((src[i] for i in range(len(src))), key=lambda r: int(r["x"][0, 0]))
    for i, r in enumerate(got):
        np.testing.assert_array_equal(r["x"], rows[i]["x"])
        assert r["blob"] == rows[i]["blob"] and r["text"] == f"q{i}".encode()
        np.testing.assert_array_equal(r["ids"], rows[i]["ids"])
    assert len(ar.split_files(d, "train")) == 1
    import tensorflow_datasets as tfds
    with pytest.raises(ValueError, match="features\\['img'\\]=Image"):
        ar.write_dataset(str(tmp_path), "bad", {"img": tfds.features.Image(shape=(4, 4, 3))},
                         {"train": []})
    with pytest.raises(ValueError, match="split 'train' example 1: missing fields \\['x'\\]"):
        ar.write_dataset(str(tmp_path), "bad2", {"x": ((), np.int32)},
                         {"train": [{"x": np.int32(0)}, {}]})
    with pytest.raises(ValueError, match="split='nope'"):
        ar.open_split(d, "nope")


def test_seeded_shuffle_epochs_and_process_slices(builder_dir):
    one = ids_of(list(id_pipeline(builder_dir, num_epochs=2, seed=3)))
    again = ids_of(list(id_pipeline(builder_dir, num_epochs=2, seed=3)))
    other = ids_of(list(id_pipeline(builder_dir, num_epochs=2, seed=4)))
    assert one == again and one != other
    first, second = one[:N], one[N:]
    assert sorted(first) == sorted(second) == list(range(N))  # each epoch covers every record
    assert first != second  # reshuffled per epoch
    parts = [ids_of(list(id_pipeline(builder_dir, num_epochs=1, seed=3, process_index=p,
                                     process_count=2, batch_size=2))) for p in range(2)]
    assert set(parts[0]).isdisjoint(parts[1])
    assert sorted(parts[0] + parts[1]) == list(range(N))
    assert parts[0] == first[0::2] and parts[1] == first[1::2]


def test_iterator_state_resumes_exactly(builder_dir):
    it = iter(id_pipeline(builder_dir, seed=1))
    pipeline.take(it, 5)
    state = it.get_state()
    expected = pipeline.take(it, 7)  # crosses the epoch boundary (12 batches per epoch)
    it2 = iter(id_pipeline(builder_dir, seed=1))
    it2.set_state(state)
    assert ids_of(pipeline.take(it2, 7)) == ids_of(expected)
    for a, b in zip(expected, pipeline.take(iter(id_pipeline(builder_dir, seed=1)), 12)[5:]):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])


def test_last_batch_padding_mask(builder_dir):
    batches = list(id_pipeline(builder_dir, num_epochs=1, batch_size=10, drop_remainder=False))
    assert len(batches) == 5
    last = batches[-1]
    assert last["inputs"].shape == (10, L)
    np.testing.assert_array_equal(last["example_mask"], [True] * 8 + [False] * 2)
    assert not last["inputs"][8:].any() and not last["mask"][8:].any()
    assert len(list(id_pipeline(builder_dir, num_epochs=1, batch_size=10))) == 4


def corrupt_record(builder_dir, index, payload):
    """Rewrites the train shard with record ``index`` replaced by ``payload`` bytes."""
    (path,) = ar.split_files(builder_dir, "train")
    reader = arm.ArrayRecordReader(path)
    records = reader.read_all()
    reader.close()
    records[index] = payload
    writer = arm.ArrayRecordWriter(path, "group_size:1")
    for r in records:
        writer.write(r)
    writer.close()


def test_corrupted_record_raises_or_is_skipped_and_counted(tmp_path):
    d = synthetic.write(str(tmp_path), N, L, V, seed=0)
    corrupt_record(d, 7, b"\xff\x00 this is not a tf.Example")
    match = "malformed record 7 \\(field '<record>'\\)"
    with pytest.raises(pipeline.MalformedRecordError, match=match):
        list(id_pipeline(d, num_epochs=1, shuffle=False))
    it = iter(id_pipeline(d, num_epochs=1, shuffle=False, skip_malformed=True,
                          drop_remainder=False))
    seen = ids_of(list(it))
    assert it.num_skipped == 1 and len(seen) == N - 1
    assert it.get_state()["num_skipped"] == 1


def test_field_violation_names_the_field(tmp_path):
    bad = [synthetic.example(i, L, V, 0) for i in range(8)]
    bad[3]["tokens"][5] = V + 7  # token id out of range
    d = ar.write_dataset(str(tmp_path), "bad_tokens",
                         {"id": ar.tensor_feature((), np.int64),
                          "tokens": ar.tensor_feature((L + 1,), np.int32)}, {"train": bad})
    src = ar.open_split(d, "train")
    index = next(i for i in range(len(src)) if int(src[i]["id"]) == 3)
    with pytest.raises(pipeline.MalformedRecordError) as err:
        list(id_pipeline(d, num_epochs=1, shuffle=False))
    assert err.value.index == index and err.value.field == "tokens"
    short = pipeline.check_record({"tokens": np.zeros(3, np.int32)},
                                  {"tokens": ((L + 1,), np.int32)})
    assert short[0] == "tokens" and "shape" in short[1]
    assert pipeline.check_record({}, {"tokens": ((None,), np.int32)}) == ("tokens", "missing")


def test_multiprocess_prefetch_matches_in_process(builder_dir):
    plain = pipeline.take(iter(id_pipeline(builder_dir, seed=2)), 6)
    it = iter(synthetic.pipeline(builder_dir, "train", batch_size=4, vocab_size=V, seq_len=L,
                                 seed=2, num_workers=2))
    try:
        multi = pipeline.take(it, 6)
        state = it.get_state()
    finally:
        it.close()
    for a, b in zip(plain, multi):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert state["num_skipped"] == 0


def test_pad_to():
    x, m = pipeline.pad_to(np.arange(3), 5, value=-1)
    np.testing.assert_array_equal(x, [0, 1, 2, -1, -1])
    np.testing.assert_array_equal(m, [1, 1, 1, 0, 0])
    x, m = pipeline.pad_to(np.arange(6), 4)
    np.testing.assert_array_equal(x, [0, 1, 2, 3])
    assert m.all()


def test_atomic_dir_replaces_on_success_and_keeps_the_old_on_error(tmp_path):
    out = tmp_path / "out"
    with fileio.atomic_dir(str(out)) as tmp:
        (tmp_path / tmp / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError, match="boom"):
        with fileio.atomic_dir(str(out)) as tmp:
            (tmp_path / tmp / "a.txt").write_text("second")
            raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "first"
    with fileio.atomic_dir(str(out)) as tmp:
        (tmp_path / tmp / "b.txt").write_text("third")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left behind
