"""Ready-made storage workers for the `backup` and `remove` tasks: filesystem and PostgreSQL.

`backtor storage-worker` serves them (worker.py); worker_config.py and paths.py hold the pure
rules (what a workerConfig may say, where the worker may read and write), filesystem.py
and postgres.py the storage work. See docs/storage-workers.md.
"""
