"""What SQLAlchemy's pre-ping costs on loopback PostgreSQL: one ``do_ping`` (a ``SELECT 1``), and a
short session with and without ``pool_pre_ping``, median of 5 x 500.

Optuna opens one session per storage call, about 40 per trial of our workers
(``storage_latency.py``), each with one ping. This measures whether skipping pings is worth it.

    python benchmarks/ping_cost.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable

import sqlalchemy as sa

from irnn_search.dev.servers import Postgres


def per_call_ms(fn: Callable[[], object], n: int = 500, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n * 1e3)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        pg = Postgres(folder)
        pg.start()
        try:
            url = pg.create_database("ping")
            engine = sa.create_engine(url, pool_pre_ping=False, pool_size=1)
            with engine.connect() as conn:
                raw = conn.connection.dbapi_connection
                print(f"do_ping (SELECT 1):           {per_call_ms(lambda: engine.dialect.do_ping(raw)):.3f} ms")
            engine.dispose()
            for pre_ping in (False, True):
                engine = sa.create_engine(url, pool_pre_ping=pre_ping, pool_size=1)

                def session(engine: sa.Engine = engine) -> None:
                    with engine.connect() as conn:
                        conn.exec_driver_sql("SELECT 1").fetchall()
                        conn.commit()

                print(f"session, pool_pre_ping={pre_ping!s:5}: {per_call_ms(session):.3f} ms")
                engine.dispose()
        finally:
            pg.stop()


if __name__ == "__main__":
    main()
