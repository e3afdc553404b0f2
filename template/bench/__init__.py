"""A benchmark of this project's worker and API: `python -m bench` (`make bench`).

Its tasks live in `bench.tasks`, which only the worker that the benchmark starts imports: they
never reach the production worker's registry.
"""
