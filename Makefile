# The two commands of the README (each installs what it needs first), and the fast loop.
.PHONY: run test test-fast

run:
	scripts/run

test:
	scripts/test

# No server: the tests not marked needs_server, with ruff and mypy (docs/development.md).
test-fast:
	scripts/test --fast
