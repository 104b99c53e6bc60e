"""`python -m service [--host H] [--port P]`: run the inspection service under uvicorn.

Every other setting comes from the environment (see service/settings.py; REDIS_URL unset means
the embedded default store). SIGTERM or Ctrl-C stop accepting connections, let in-flight requests
finish (up to INSPECT_SHUTDOWN_TIMEOUT_S), drain the inspection queue and stop the embedded store.

    python -m service                      # 127.0.0.1:8000, embedded model and store
    python -m service --host 0.0.0.0 --port 8080
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn
from pydantic import ValidationError

from service.settings import ServiceSettings


def main(argv: list[str] | None = None) -> int:
    try:
        settings = ServiceSettings()
    except ValidationError as exc:
        print(f"invalid settings:\n{exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=settings.host, help=f"default {settings.host}")
    parser.add_argument("--port", type=int, default=settings.port, help=f"default {settings.port}")
    args = parser.parse_args(argv)
    settings = settings.model_copy(update={"host": args.host, "port": args.port})

    from service.main import create_app  # after argument parsing: --help stays instant

    app = create_app(settings)
    logging.getLogger(__name__).info(
        "listening", extra={"fields": {"host": settings.host, "port": settings.port}}
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
