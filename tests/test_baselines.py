import numpy as np
import pytest

from bigrec_cli.baselines import EASE, ItemKNN, Pop, interaction_matrix, symmetric_inverse


@pytest.fixture
def matrix():
    # users x items: u0 {0,1}, u1 {0,1,2}, u2 {2}
    return interaction_matrix(np.array([0, 0, 1, 1, 1, 2]), np.array([0, 1, 0, 1, 2, 2]), 3, 3)


def test_pop_counts(matrix):
    assert Pop().fit(matrix).score(matrix[[0]]).tolist() == [[2.0, 2.0, 2.0]]


def test_itemknn_cosine_by_hand(matrix):
    model = ItemKNN(neighbours=2).fit(matrix)
    # items 0 and 1 share users {0,1}: cos = 2 / (sqrt2*sqrt2) = 1; items 0 and 2 share u1: 1 / (sqrt2*sqrt2) = 0.5
    assert model.similarity_[0, 1] == pytest.approx(1.0)
    assert model.similarity_[0, 2] == pytest.approx(0.5)
    assert model.similarity_[0, 0] == 0.0
    # u2 has item 2 only: scores = similarity row 2
    assert model.score(matrix[[2]])[0].tolist() == pytest.approx([0.5, 0.5, 0.0])


def test_ease_closed_form(matrix):
    l2 = 1.0
    model = EASE(l2=l2).fit(matrix)
    dense = matrix.toarray()
    precision = np.linalg.inv(dense.T @ dense + l2 * np.eye(3))
    expected = -precision / np.diag(precision)
    np.fill_diagonal(expected, 0.0)
    assert np.allclose(model.weights_, expected)
    assert np.allclose(np.diag(model.weights_), 0.0)
    # inverted by its Cholesky factor in place (blocks of rows mirrored), scaled in place: the LU inverse's values
    rng = np.random.default_rng(0)
    larger = interaction_matrix(*np.nonzero(rng.random((3000, 2500)) < 0.01), 3000, 2500)
    gram = (larger.T @ larger).toarray().astype("float64") + 5.0 * np.eye(2500)
    precision = np.linalg.inv(gram)
    divided = precision / -np.diag(precision)
    np.fill_diagonal(divided, 0.0)
    weights = EASE(l2=5.0).fit(larger).weights_
    assert weights.flags.c_contiguous and np.allclose(weights, divided, rtol=0, atol=1e-12)
    assert np.array_equal(gram, gram.T) and np.array_equal(symmetric_inverse(gram.copy()), symmetric_inverse(gram).T)
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        symmetric_inverse(np.array([[1.0, 2.0], [2.0, 1.0]]))


def test_edlae_is_ease_whose_penalty_grows_with_each_items_count(matrix):
    # every item of `matrix` was had by 2 users: dropout p adds p / (1 - p) * 2 to each item's penalty alike
    for dropout in (0.25, 0.5, 0.75):
        edlae = EASE(l2=1.0, dropout=dropout).fit(matrix)
        assert np.allclose(edlae.weights_, EASE(l2=1.0 + dropout / (1 - dropout) * 2).fit(matrix).weights_)
    # counts 3, 1, 2: each item its own penalty, 1 + its count (p / (1 - p) = 1), as computed here by hand
    uneven = interaction_matrix(np.array([0, 0, 1, 1, 2, 3]), np.array([0, 1, 0, 2, 0, 2]), 4, 3)
    plain, edlae = EASE(l2=1.0).fit(uneven), EASE(l2=1.0, dropout=0.5).fit(uneven)
    dense = uneven.toarray()
    gram = dense.T @ dense
    precision = np.linalg.inv(gram + np.diag(1.0 + np.diag(gram)))  # p / (1 - p) = 1
    expected = -precision / np.diag(precision)
    np.fill_diagonal(expected, 0.0)
    assert np.allclose(edlae.weights_, expected)
    assert not np.allclose(edlae.weights_, plain.weights_)
    with pytest.raises(ValueError):
        EASE(l2=1.0, dropout=1.0).fit(uneven)


def test_item_item_records_name_their_ease_parameters():
    from bigrec_cli.errors import ArtifactError
    from bigrec_cli.itemitem import ease_method, ease_parameters

    assert ease_method(50.0, 0.0) == "ease(lambda=50)"  # as runs written before EDLAE name it
    assert ease_parameters("ease(lambda=50)") == (50.0, 0.0)
    assert ease_method(10.0, 0.5) == "ease(lambda=10, dropout=0.5)"
    assert ease_parameters(ease_method(10.0, 0.5)) == (10.0, 0.5)
    with pytest.raises(ArtifactError):
        ease_parameters("ease(l2=3)")


def test_cosine_neighbours_in_blocks_equal_the_whole_product_computed_by_hand():
    from scipy import sparse

    from bigrec_cli.itemitem import cosine_neighbours

    rng = np.random.default_rng(4)
    dense = (rng.random((300, 120)) < 0.08) * rng.uniform(0.5, 2.0, size=(300, 120))  # users × items, no ties
    dense[:, 7] = 0.0  # an item nobody had: no neighbours, and nobody's neighbour
    norms = np.linalg.norm(dense, axis=0)
    unit = dense / np.where(norms > 0, norms, 1.0)
    expected = unit.T @ unit
    np.fill_diagonal(expected, 0.0)
    for block_cells in (120 * 7, 2**25):  # 7 items a block (18 blocks, the last short), and all in one
        found = cosine_neighbours(sparse.csr_matrix(dense), neighbours=5, block_cells=block_cells).toarray()
        assert found.shape == (121, 121) and not found[0].any() and not found[:, 0].any()  # row/column 0: padding
        for item in range(120):
            row = expected[item]
            best = set(np.argsort(-row)[:5][row[np.argsort(-row)[:5]] > 0])
            assert set(np.flatnonzero(found[item + 1]) - 1) == best, item
            np.testing.assert_allclose(found[item + 1, [b + 1 for b in best]], row[list(best)], rtol=1e-5)
        assert not found[8].any() and not found[:, 8].any()
