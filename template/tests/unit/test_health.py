"""Readiness reports both dependencies; liveness depends on neither."""

from httpx import AsyncClient


async def test_health_reports_database_and_broker(client: AsyncClient) -> None:
    response = await client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok"}


async def test_liveness_answers_without_touching_dependencies(client: AsyncClient) -> None:
    # Kubernetes restarts a pod whose liveness fails: a database outage must not do that.
    response = await client.get("/health/live")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
