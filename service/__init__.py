"""The online inspection API (FastAPI + uvicorn).

`python -m service [--host H] [--port P]` runs it; `service.main.create_app()` builds the app.
Settings come from the environment (service/settings.py, prefix INSPECT_; REDIS_URL for the
prompt store). Importing this package does no I/O and loads no model.
"""
