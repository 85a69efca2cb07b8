"""What annotation/server/patches.py's `skip_reloading_new_bare_records` must keep: in one bulk upsert, a new record
without responses, suggestions or vectors answers with empty ones and pending, while the records next to it (new
with a suggestion or a submitted response, or already stored) are read back as the stock server reads them; the
answer matches what a later read of the dataset returns."""

from __future__ import annotations

import uuid

import argilla as rg
import httpx


def test_a_bulk_mixing_new_bare_new_annotated_and_existing_records(argilla_server) -> None:
    client = rg.Argilla(api_url=argilla_server.url, api_key=argilla_server.api_key)
    settings = rg.Settings(
        fields=[rg.TextField(name="text")], questions=[rg.LabelQuestion(name="label", labels=["good", "bad"])]
    )
    dataset = rg.Dataset(name=f"b-{uuid.uuid4().hex[:8]}", workspace="argilla", settings=settings, client=client)
    dataset.create()
    question = str(dataset.settings.questions["label"].id)
    headers = {"X-Argilla-Api-Key": argilla_server.api_key}
    with httpx.Client(base_url=f"{argilla_server.url}/api/v1", headers=headers, timeout=30) as http:
        me = http.get("/me").json()["id"]
        url = f"/datasets/{dataset.id}/records/bulk"
        submitted = [{"user_id": me, "status": "submitted", "values": {"label": {"value": "good"}}}]
        suggestion = [{"question_id": question, "value": "bad", "agent": "m", "type": "model"}]
        old = {"external_id": "old", "fields": {"text": "old"}, "responses": submitted}
        first = http.put(url, json={"items": [old]})
        assert first.status_code == 200, first.text

        answer = http.put(
            url,
            json={
                "items": [
                    {"external_id": "bare", "fields": {"text": "bare"}},
                    {"external_id": "suggested", "fields": {"text": "s"}, "suggestions": suggestion},
                    {"external_id": "answered", "fields": {"text": "a"}, "responses": submitted},
                    {"external_id": "old", "fields": {"text": "old, edited"}},
                ]
            },
        )
        assert answer.status_code == 200, answer.text
        got = {r["external_id"]: r for r in answer.json()["items"]}
        shape = {
            key: (r["status"], len(r["responses"]), [s["value"] for s in r["suggestions"]], r["vectors"])
            for key, r in got.items()
        }
        assert shape == {
            "bare": ("pending", 0, [], {}),
            "suggested": ("pending", 0, ["bad"], {}),
            "answered": ("completed", 1, [], {}),
            "old": ("completed", 1, [], {}),
        }
        assert got["old"]["fields"] == {"text": "old, edited"}

        stored = http.get(
            f"/datasets/{dataset.id}/records", params={"include": ["responses", "suggestions"], "limit": 10}
        ).json()["items"]
        for record in stored:
            mine = got[record["external_id"]]
            assert (record["id"], record["status"], record["fields"]) == (mine["id"], mine["status"], mine["fields"])
            assert len(record["responses"]) == len(mine["responses"])
            assert [s["value"] for s in record["suggestions"]] == [s["value"] for s in mine["suggestions"]]
