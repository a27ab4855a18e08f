"""ALS fitting: the blocked conjugate-gradient solve is exact per row whatever the blocks, and a
fit's memory stays near its factors. Memory is measured with tracemalloc (numpy reports its
buffers to it); nothing is timed (the speed beside implicit is `bench/models.py --als-only`)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from models import Interactions, make
from models.als import solve

REG = 0.05


def catalogue(n_users: int, n_items: int, per_user: int, seed: int = 1) -> Interactions:
    """Random histories over a long tail of `n_items` items, weights 1-8."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    p = 1.0 / np.arange(1, n_items + 1) ** 0.8
    items = rng.choice(n_items, size=len(users), p=p / p.sum())
    weights = rng.choice(np.asarray([1.0, 2.0, 8.0], dtype=np.float32), size=len(users))
    m = sp.csr_matrix((weights, (users, items)), shape=(n_users, n_items), dtype=np.float32)
    m.sum_duplicates()
    ids = np.asarray([f"u{u}" for u in range(n_users)], dtype=object)
    return Interactions(m, ids, np.asarray([f"i{i}" for i in range(n_items)], dtype=object))


def peak_bytes(call: Callable[[], Any]) -> int:
    """The peak of memory traced while `call` runs, above what was held before."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        call()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def exact(conf: sp.csr_matrix, other: np.ndarray) -> np.ndarray:
    """Every row's least-squares factors, solved directly in float64:
    (Y'Y + Y_u' diag(c_u) Y_u + reg I) x_u = Y_u' (1 + c_u), c_u = alpha * w_u."""
    y = other.astype(np.float64)
    gram = y.T @ y + REG * np.eye(y.shape[1])
    out = np.zeros((conf.shape[0], y.shape[1]))
    for u in range(conf.shape[0]):
        row = conf[u]
        yu, c = y[row.indices], row.data.astype(np.float64)
        out[u] = np.linalg.solve(gram + (yu.T * c) @ yu, yu.T @ (1.0 + c))
    return out


def problem(rows: int, cols: int, density: float, factors: int) -> tuple[Any, ...]:
    """A confidence matrix with an empty row and one row denser than the others, the other
    side's factors and a start."""
    rng = np.random.default_rng(4)
    dense = (rng.random((rows, cols)) < density) * rng.choice([1.0, 2.0, 8.0], (rows, cols))
    dense[3] = 0  # a user with no history: the solution is 0
    dense[5, : min(cols, 40)] = 2.0  # more entries than the small blocks below hold
    conf = sp.csr_matrix(dense.astype(np.float32) * np.float32(10.0))
    other = (rng.standard_normal((cols, factors)) * 0.3).astype(np.float32)
    start = (rng.standard_normal((rows, factors)) * 0.1).astype(np.float32)
    return conf, other, start


@pytest.mark.parametrize(
    ("rows", "cols", "density"),
    [(60, 2_000, 0.01), (40, 12, 0.5)],  # the blocked solve and the dense one (well filled)
    ids=["sparse", "well-filled"],
)
def test_solve_converges_to_the_exact_least_squares_factors_of_every_row(
    rows: int, cols: int, density: float
) -> None:
    factors = 8
    conf, other, start = problem(rows, cols, density, factors)
    want = exact(conf, other)
    for block in (16, 4_096):
        got = solve(conf, other, start, REG, factors + 4, block=block)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max())


def test_the_size_of_the_blocks_of_rows_never_changes_the_factors() -> None:
    conf, other, start = problem(300, 3_000, 0.005, 16)
    one_row = solve(conf, other, start, REG, 3, block=1)
    for block in (7, 64, 4_096, 10**9):
        np.testing.assert_allclose(
            solve(conf, other, start, REG, 3, block=block), one_row, rtol=1e-5, atol=1e-7
        )


def test_a_sparse_fit_below_the_dense_size_limit_never_holds_a_users_x_items_array() -> None:
    # 1,000 x 10,000 entries, 0.2 % observed: under the size limit for a dense copy, but dense
    # products would do 500 times the work of the observed entries (and hold 40 MB apiece).
    data = catalogue(1_000, 10_000, 20)
    users_x_items = data.shape[0] * data.shape[1] * 4
    peak = peak_bytes(lambda: make("als", factors=8, iterations=1).fit(data))
    assert peak < users_x_items / 4, (peak, users_x_items)


def test_a_fit_holds_about_twice_its_factors_and_a_few_copies_of_the_entries() -> None:
    data = catalogue(8_000, 4_000, 12)
    factors = 32
    held = (sum(data.shape) * factors * 4, data.matrix.nnz)
    peak = peak_bytes(lambda: make("als", factors=factors, iterations=2).fit(data))
    # factors: users and items, each with its previous value while a half is solved; entries:
    # the confidence matrix and its transpose (8 bytes an entry each), and one block at a time
    assert peak < 2.5 * held[0] + 32 * held[1], (peak, held)


def test_a_fit_leaves_the_blas_thread_limits_as_it_found_them() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def limits() -> list[tuple[str, int]]:
        return [(p["filepath"], p["num_threads"]) for p in threadpoolctl.threadpool_info()]

    before = limits()
    make("als", factors=8, iterations=1).fit(catalogue(3_000, 4_000, 10))
    assert limits() == before
