"""Ready-made storage workers for the `backup`, `remove`, `verify` and `restore` tasks:
filesystem and PostgreSQL.

`backtor storage-worker` serves them (worker.py); worker_config.py, task_input.py and
paths.py hold the pure rules (what a workerConfig, restoreConfig or verifyConfig may say,
where the worker may read and write), filesystem.py, archive.py and postgres.py the storage
work. See docs/storage-workers.md.
"""
