"""Per-sample streams: Philox4x32-10 known answers, batch invariance, distribution and independence."""
import numpy as np
import torch
from scipy import stats

from bench.rng import PerSampleRNG, derive_seed, derive_seeds, philox4x32, sample_batches


def words(c, k):
    t = [torch.tensor([v], dtype=torch.int64) for v in (*c, *k)]
    return [int(w) for w in philox4x32(tuple(t[:4]), tuple(t[4:]))]


def test_philox_known_answers():
    """Random123's published known-answer vectors for philox4x32-10."""
    assert words((0, 0, 0, 0), (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    m = 0xFFFFFFFF
    assert words((m, m, m, m), (m, m)) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert words((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == \
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_sample_i_does_not_depend_on_its_batch():
    whole, part = PerSampleRNG.for_indices(3, range(6)), PerSampleRNG.for_indices(3, range(2, 6))
    for rng in (whole, part):
        rng.randn(5)
        rng.rand(2, 3)
    assert torch.equal(whole.randn(7, 2)[2:], part.randn(7, 2))
    assert torch.equal(whole.randint(10, 4)[2:], part.randint(10, 4))


def test_draws_follow_their_distributions():
    rng = PerSampleRNG.for_indices(1, range(400))
    z = rng.randn(500).double()
    assert stats.kstest(z.flatten().numpy(), "norm").pvalue > 1e-3
    u = rng.rand(500).double().flatten().numpy()
    assert stats.kstest(u, "uniform").pvalue > 1e-3 and 0 < u.min() and u.max() < 1
    counts = np.bincount(rng.randint(7, 700).flatten().numpy(), minlength=7)
    assert stats.chisquare(counts).pvalue > 1e-3
    r = rng.rademacher(1000)
    assert set(r.unique().tolist()) == {-1.0, 1.0} and abs(float(r.mean())) < 0.01


def test_streams_are_uncorrelated_across_samples_and_draws():
    rng = PerSampleRNG.for_indices(2, range(64))
    z = rng.randn(4000).double()
    corr = torch.corrcoef(z)  # 64 x 64 between samples
    off = corr[~torch.eye(64, dtype=torch.bool)]
    assert off.abs().max() < 5 / np.sqrt(4000)
    lag = torch.corrcoef(torch.stack([z[:, :-1].flatten(), z[:, 1:].flatten()]))[0, 1]
    assert abs(float(lag)) < 5 / np.sqrt(z.numel())
    assert not torch.equal(PerSampleRNG.for_indices(0, [0]).randn(8), PerSampleRNG.for_indices(1, [0]).randn(8))


def test_buffered_draws_equal_direct_generation():
    """Blocks generated ahead in chunks give the same values as generating each block on demand:
    a draw of n values uses the next ceil(n / 4) blocks, and only (seed, block index) matters."""
    rng = PerSampleRNG.for_indices(0, range(3))
    draws = [rng.rand(5, dtype=torch.float64) for _ in range(40)]
    ref = PerSampleRNG.for_indices(0, range(3))._generate(0, 80).t()  # (batch, words)
    for k, x in enumerate(draws):
        assert torch.equal(x, (ref[:, 8 * k:8 * k + 5].double() + 0.5) / 2**32)


def test_numpy_and_torch_philox_agree(monkeypatch):
    """The CPU path (numpy uint64) and the device path (torch int64) give the same words and draws."""
    gen = np.random.default_rng(0)
    c = [gen.integers(0, 2**32, size=(5, 7), dtype=np.uint64) for _ in range(4)]
    k = [gen.integers(0, 2**32, size=(1, 7), dtype=np.uint64) for _ in range(2)]
    by_numpy = philox4x32(tuple(c), tuple(k))
    by_torch = philox4x32(tuple(torch.from_numpy(a.astype(np.int64)) for a in c),
                          tuple(torch.from_numpy(a.astype(np.int64)) for a in k))
    for a, b in zip(by_numpy, by_torch):
        assert np.array_equal(a.astype(np.int64), b.numpy())
    fast = PerSampleRNG.for_indices(4, range(9))
    monkeypatch.setattr(PerSampleRNG, "_NUMPY_ON_CPU", False)
    slow = PerSampleRNG.for_indices(4, range(9))
    assert not slow._numpy and fast._numpy
    for rng in (fast, slow):
        rng.rand(3)
    assert torch.equal(fast.randn(2, 5), slow.randn(2, 5)) and torch.equal(fast.randint(6, 11), slow.randint(6, 11))


def test_prefetch_and_batches_change_no_value():
    """Generating ahead (any prefetch size) and batching through sample_batches give the same draws
    as one stream per sample drawn on its own."""
    def draws(rng):
        return [rng.randn(3), rng.rand(2, 2), rng.randn(1, 4, 4), rng.randint(5, 7), rng.randn(2)]

    alone = [draws(PerSampleRNG.for_indices(1, [i])) for i in range(10)]
    for prefetch in (0, 1, 3, 50):
        got = draws(PerSampleRNG.for_indices(1, range(10), prefetch=prefetch))
        for i in range(10):
            assert all(torch.equal(g[i], a[0]) for g, a in zip(got, alone[i]))
    rngs, batched = [], []
    for rng in sample_batches(1, 0, 10, 4):  # each batch draws before the next is made
        rngs.append(rng)
        batched.append(draws(rng))
    assert [r.batch_size for r in rngs] == [4, 4, 2]
    for i in range(10):
        assert all(torch.equal(g[i % 4], a[0]) for g, a in zip(batched[i // 4], alone[i]))
    assert rngs[1]._chunk == rngs[0].blocks_used  # the second batch prefetched what the first drew


def test_derive_seeds_matches_derive_seed():
    assert derive_seeds((3, "sample"), range(50)) == [derive_seed(3, "sample", i) for i in range(50)]
    assert derive_seeds((), ["x", 5]) == [derive_seed("x"), derive_seed(5)]
