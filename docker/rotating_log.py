"""Copy standard input to a log file that is rotated by size: `python rotating_log.py FILE`.

The launcher's server writes its output through it (`MLFLOW_LOG_FILE`), so a flood of failing
requests cannot fill the disk: FILE grows to `MAX_BYTES`, then becomes FILE.1 (FILE.1 becomes
FILE.2, ...), keeping `BACKUPS` old files. Files are created 0600 (the entrypoint's umask).
Standard library only.
"""

import logging
import logging.handlers
import sys

MAX_BYTES = 10 * 1024**2
BACKUPS = 5


def main(path: str) -> None:
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8", errors="replace"
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    for line in sys.stdin.buffer:
        text = line.decode("utf-8", "replace").rstrip("\n")
        handler.emit(logging.makeLogRecord({"msg": text, "args": None}))
        handler.flush()


if __name__ == "__main__":
    main(sys.argv[1])
