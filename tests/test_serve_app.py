"""The app is built from what it needs: a recommender loader, a generation and an ingest function. Here they are
small fakes, so the HTTP layer (auth, limits, reloads, validation) is tested without a trained run."""

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from bigrec_cli.feedback import IngestSummary
from bigrec_cli.serve import create_app


class FakeRecommender:
    def __init__(self, run_id: str) -> None:
        self.run = SimpleNamespace(run_id=run_id)
        self.scorer = SimpleNamespace(num_items=3)

    def recommend(self, user_id: str, k: int = 10, exclude_seen: bool = True, **options) -> dict:
        items = [{"rank": 1, "item_id": f"{self.run.run_id}-top", "title": "", "score": 0.9}]
        return {"user_id": user_id, "cold_start": False, "items": items[:k]}


@pytest.fixture
def fake():
    state = {"generation": 1, "rows": []}

    def ingest(rows):
        state["rows"].extend(rows)
        return IngestSummary(num_rows=len(rows), num_accepted=len(rows))

    app = create_app(
        load=lambda: FakeRecommender(f"run{state['generation']}"),
        generation=lambda: state["generation"],
        ingest=ingest,
        token="t0k",
        watch=False,
    )
    return TestClient(app), app, state


def test_fake_recommender_is_served_and_swapped(fake):
    client, app, state = fake
    headers = {"Authorization": "Bearer t0k"}
    assert client.get("/recommend", params={"user": "u1"}, headers=headers).json()["items"][0]["item_id"] == "run1-top"
    state["generation"] = 2
    assert app.state.watcher.check() is True
    assert client.get("/recommend", params={"user": "u1"}, headers=headers).json()["items"][0]["item_id"] == "run2-top"
    assert client.get("/health").json()["run_id"] == "run2"


def test_feedback_rows_reach_the_ingest_function(fake):
    client, _, state = fake
    body = [{"user_id": "u1", "item_id": "i1"}, {"user_id": "u2", "item_id": "i2", "event": "purchase"}]
    response = client.post("/feedback", json=body, headers={"Authorization": "Bearer t0k"})
    assert response.status_code == 200 and response.json()["num_accepted"] == 2
    assert [(row.line, row.values["user_id"]) for row in state["rows"]] == [(1, "u1"), (2, "u2")]
    assert client.post("/feedback", json=body).status_code == 401
