"""The server container's healthcheck: MLflow answers over TLS and both databases answer.

MLflow's /health does not touch the database, so a server whose PostgreSQL is gone would look
healthy; this also runs `SELECT 1` in the runs and the users database, with the server's own
settings (POSTGRES_HOST/PORT/USER, POSTGRES_PASSWORD_FILE or POSTGRES_PASSWORD). Exit status 0
when healthy, 1 with the reason otherwise. The test suite runs it against the launcher's server.
"""

import os
import ssl
import sys
import urllib.request
from pathlib import Path

import psycopg2


def main() -> int:
    port = os.environ.get("MLFLOW_PORT", "5000")
    # The container asks itself: the certificate names the public host, not 127.0.0.1.
    context = ssl._create_unverified_context()
    try:
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}/health", timeout=5, context=context
        ) as response:
            if response.status != 200:
                return fail(f"mlflow answered {response.status}")
    except OSError as error:
        return fail(f"mlflow does not answer: {error}")
    password_file = os.environ.get("POSTGRES_PASSWORD_FILE")
    password = Path(password_file).read_text() if password_file else os.environ["POSTGRES_PASSWORD"]
    for database in ("mlflow", "mlflow_auth"):
        try:
            with (
                psycopg2.connect(
                    host=os.environ.get("POSTGRES_HOST", "db"),
                    port=os.environ.get("POSTGRES_PORT", "5432"),
                    user=os.environ.get("POSTGRES_USER", "mlflow"),
                    password=password,
                    dbname=database,
                    connect_timeout=5,
                ) as connection,
                connection.cursor() as cursor,
            ):
                cursor.execute("SELECT 1")
        except psycopg2.Error as error:
            return fail(f"database {database} does not answer: {str(error).strip()}")
    return 0


def fail(reason: str) -> int:
    print(f"unhealthy: {reason}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
