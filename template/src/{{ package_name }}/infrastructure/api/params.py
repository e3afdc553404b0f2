"""Path and query integers bounded by the columns they are compared with.

An integer beyond a column's range would reach the database driver and fail there (a 500);
bounded here, it is a 422 that says which limit it broke.
"""

from typing import Annotated

from fastapi import Query

# PostgreSQL INTEGER (a SQLAlchemy Integer primary key) and BIGINT (LIMIT/OFFSET).
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=INT64_MAX)]
