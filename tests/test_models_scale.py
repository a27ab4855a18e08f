"""Models on real catalogue sizes: no items x items copy per request, bounded fit and batch
memory. Memory is measured with tracemalloc (numpy reports its buffers to it); nothing is timed."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import Interactions, Recommender, make
from models.itemknn import ItemKNN
from training.batch import recommend_many, write_csv


def catalogue(n_items: int, n_users: int, per_user: int = 12, seed: int = 1) -> Interactions:
    """Random histories with a long tail of popularity over `n_items` items."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    p = 1.0 / np.arange(1, n_items + 1) ** 0.8
    items = rng.permutation(n_items)[rng.choice(n_items, size=len(users), p=p / p.sum())]
    columns = [str(i) for i in range(n_items)]  # the whole catalogue, used or not
    return Interactions.from_triples(users.astype(str), items.astype(str), columns=columns)


def peak_bytes(call: Callable[[], Any]) -> int:
    """The peak of memory traced while `call` runs, above what was held before."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        call()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def ease_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Interactions, Recommender]:
    data = catalogue(2_000, 3_000)
    return data, make("ease").fit(data)


def test_ease_weights_are_c_contiguous_float32_after_fit_and_after_load(
    ease_world: tuple[Interactions, Recommender], tmp_path: Path
) -> None:
    _, model = ease_world
    for m in (model, Recommender.load(model.save(tmp_path / "ease"))):
        w = m._arrays()["weights"]
        assert w.dtype == np.float32 and w.flags.c_contiguous, (w.dtype, w.flags)


def test_an_old_fortran_ordered_ease_artifact_loads_c_contiguous(
    ease_world: tuple[Interactions, Recommender], tmp_path: Path
) -> None:
    _, model = ease_world
    folder = model.save(tmp_path / "old")
    with np.load(folder / "arrays.npz") as a:
        arrays = {k: a[k] for k in a.files}
    arrays["weights"] = np.asfortranarray(arrays["weights"])  # what fits before the fix wrote
    np.savez(folder / "arrays.npz", **arrays)
    loaded = Recommender.load(folder)
    assert loaded._arrays()["weights"].flags.c_contiguous
    items = model.candidates()
    h = {str(items[0]): 1.0, str(items[5]): 1.0}
    assert np.allclose(loaded.score({}, h, 0), model.score({}, h, 0))


def test_scoring_one_user_with_ease_allocates_no_items_by_items_array(
    ease_world: tuple[Interactions, Recommender], tmp_path: Path
) -> None:
    data, model = ease_world
    matrix = model._arrays()["weights"].nbytes
    history, anchor = data.history(1), str(data.items[3])
    for m in (model, Recommender.load(model.save(tmp_path / "ease"))):
        m.score({}, data.history(0), 0)  # warm the item index
        assert peak_bytes(partial(m.score, {}, history, 0)) < matrix / 20
        assert peak_bytes(partial(m.recommend, history, 10)) < matrix / 20
        assert peak_bytes(partial(m.score_like, anchor)) < matrix / 20


def test_batch_recommendations_match_one_user_recommendations(
    ease_world: tuple[Interactions, Recommender],
) -> None:
    data, model = ease_world
    users = [str(u) for u in data.users[:300]] + ["nobody"]
    got = dict(recommend_many(model, data, users, 10, budget=1 << 20))  # many small chunks
    index = data.user_index()
    for user in users:
        history = data.history(index[user]) if user in index else {}
        assert got[user] == [s.item for s in model.recommend(history, 10)], user


def test_batch_scoring_holds_a_bounded_chunk_of_users_x_items(tmp_path: Path) -> None:
    data = catalogue(20_000, 3_000, per_user=5)
    model = make("popular").fit(data)
    users = [str(u) for u in data.users]
    full = len(users) * data.shape[1] * 4  # every user's scores at once: 240 MB
    budget = 8 << 20
    peak = peak_bytes(
        lambda: write_csv(model, data, users, 10, tmp_path / "out.csv", budget=budget)
    )
    assert peak < 3 * budget < full / 8, peak
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "user_id,item_id,rank" and len(lines) == 1 + 10 * len(users)


def test_itemknn_fit_never_holds_a_dense_items_x_items_matrix() -> None:
    n = 5_000
    data = catalogue(n, 3_000, per_user=5)
    model = ItemKNN()
    assert peak_bytes(lambda: model.fit(data)) < n * n * 8 / 2  # half of one float64 matrix
    assert model.similarity.nnz <= n * 100 + n  # the kept neighbours (ties at the cut aside)


def test_ease_fit_peak_is_within_twice_its_weights() -> None:
    data = catalogue(3_000, 3_000)
    model = make("ease")
    peak = peak_bytes(lambda: model.fit(data))
    assert peak < 2 * model._arrays()["weights"].nbytes, peak
