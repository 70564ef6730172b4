import pytest
import torch

from ks_ops import KSPattern, check_chain


@pytest.mark.parametrize("bad", [(0, 1, 1, 1), (1, -2, 1, 1), (1, 1, 1.5, 1), (True, 1, 1, 1), (1, 1, 1, "3")])
def test_invalid_entries_are_named(bad):
    with pytest.raises(ValueError, match=r"KSPattern: [abcd] must be a positive int"):
        KSPattern(*bad)


def test_integer_scalars_of_other_libraries_are_ints():
    np = pytest.importorskip("numpy")
    p = KSPattern(np.int64(2), np.int32(3), torch.tensor(4).item(), np.uint8(5))
    assert p.shape == (2, 3, 4, 5) and all(type(v) is int for v in p.shape)
    assert KSPattern.of(np.array([1, 2, 3, 4])).shape == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="must be a positive int"):
        KSPattern(np.float64(2.0), 3, 4, 5)
    with pytest.raises(ValueError, match="must be a positive int"):
        KSPattern(np.int64(0), 3, 4, 5)


def test_of_rejects_wrong_length():
    with pytest.raises(ValueError, match="expected 4 ints"):
        KSPattern.of((1, 2, 3))


def test_sizes():
    p = KSPattern(2, 3, 5, 7)
    assert (p.in_features, p.out_features) == (2 * 5 * 7, 2 * 3 * 7)
    assert p.nnz == 2 * 3 * 5 * 7
    assert p.density == pytest.approx(p.nnz / (70 * 42))
    assert p.transpose() == KSPattern(2, 5, 3, 7)


def test_to_dense_follows_the_definition_entry_by_entry():
    p = KSPattern(2, 3, 4, 3)
    w = torch.randn(p.shape, dtype=torch.float64)
    dense = p.to_dense(w)
    expected = torch.zeros(p.out_features, p.in_features, dtype=torch.float64)
    a, b, c, d = p.shape
    for i in range(a):
        for j in range(b):
            for k in range(c):
                for l in range(d):
                    expected[i * b * d + j * d + l, i * c * d + k * d + l] = w[i, j, k, l]
    assert torch.equal(dense, expected)


def test_transpose_is_the_pattern_of_k_transposed():
    p = KSPattern(3, 2, 5, 4)
    w = torch.randn(p.shape)
    assert torch.equal(p.transpose().to_dense(w.transpose(1, 2)), p.to_dense(w).T)


def test_support_mask_matches_nonzeros():
    p = KSPattern(4, 2, 3, 5)
    mask = p.support_mask()
    assert mask.dtype == torch.bool and mask.sum().item() == p.nnz
    w = torch.rand(p.shape) + 0.5  # strictly nonzero
    assert torch.equal(p.to_dense(w) != 0, mask)


def test_random_weights_paper_init():
    p = KSPattern(3, 8, 64, 2)
    w = p.random_weights(dtype=torch.float64)
    assert w.shape == p.shape and w.dtype == torch.float64
    assert w.abs().max() <= 1 / 64 and w.abs().max() > 0.9 / 64
    assert abs(w.mean().item()) < 1e-3


def test_check_chain():
    chain = check_chain([(6, 64, 64, 1), (1, 768, 192, 2)])
    assert chain[0].in_features == 384 and chain[-1].out_features == 1536
    with pytest.raises(ValueError, match=r"factor 0 \(2,48,192,1\) outputs 96 features but factor 1"):
        check_chain([(2, 48, 192, 1), (6, 64, 64, 1)])
    with pytest.raises(ValueError, match="at least one"):
        check_chain([])
