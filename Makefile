# The two commands of the README. Both install what they need first (scripts/setup.sh is idempotent).
.PHONY: setup demo test bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/vaest demo demo_out

test: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider

bench: setup
	.venv/bin/python benchmarks/run.py
