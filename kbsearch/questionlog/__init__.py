"""Question-log stage: every ``/ask`` (redacted) and its feedback, in a real database through SQLAlchemy 2.

``db`` holds the schema and the engine (SQLite in WAL mode under ``home`` by default, any SQLAlchemy URL
otherwise); ``writer.QuestionLog`` is the ``QueryEngine`` observer that queues each finished trace and
writes batches from a background thread (a full queue or a broken database drops records, counted, and
never fails or slows a question); ``redact`` masks personal data before anything is stored; ``report``
answers the dashboard's questions (volume, rates, latency, scores, FAQs, the log itself, exports).
"""
