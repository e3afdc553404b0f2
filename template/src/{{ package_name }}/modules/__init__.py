"""The application's features: one package each (router, schemas, service, tasks, models).

Add your own here. The worker, the scheduler and Alembic find a feature's `tasks.py` and
`models.py` by themselves (see `features.py`); the API includes its router in `main.py`.
Features build on `infrastructure/` and are never imported by it.
"""
