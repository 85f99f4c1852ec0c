"""API stage: the HTTP edge (FastAPI). ``app.create_app`` wires the routes (``/ask``, ``/similarity``,
``/healthz``, ``/readyz``, ``/metrics``) to the query engine and its observers; ``models`` holds the
request and response models, the only place pydantic meets a user's input.
"""
