"""Health reports both dependencies."""

from httpx import AsyncClient


async def test_health_reports_database_and_broker(client: AsyncClient) -> None:
    response = await client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok"}
