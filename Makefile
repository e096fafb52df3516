# The two commands a newcomer needs: `make run` and `make test`.
.PHONY: setup run test bench schemas clean

setup:
	@bash scripts/setup.sh

run: setup
	@bash scripts/run.sh

test: setup
	@bash scripts/test.sh $(ARGS)

bench: setup
	.venv/bin/python bench/ingest_folder.py

schemas: setup
	.venv/bin/python -m schemas.generate

clean:
	rm -rf .venv pixmo-data .pytest_cache .hypothesis
