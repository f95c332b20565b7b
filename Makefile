# `make demo`: set up .venv when missing or older than pyproject.toml, then run the demo workflow.
# `make test`: the same set-up, then the test suite.
# `make zoo`: the demo plus every MIL model (config/zoo.yaml) on the demo's features, in results/.
# `make benchmark`: the full benchmark (config/benchmark.yaml) in runs/benchmark/.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo zoo benchmark test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/snakemake --cores 2
	$(VENV)/bin/snakemake --report results/report.html

zoo: setup
	$(VENV)/bin/snakemake --cores 2 --configfile config/config.yaml config/zoo.yaml
	$(VENV)/bin/snakemake --configfile config/config.yaml config/zoo.yaml --report results/report.html

benchmark: setup
	mkdir -p runs/benchmark
	# one thread per pretraining/fine-tuning job: on 2 cores a 2-thread job waits until no 1-core MIL job runs;
	# greedy scheduling: the ILP scheduler re-solves over ~800 jobs after each finishes, on the same 2 cores
	$(VENV)/bin/snakemake --cores 2 --scheduler greedy --set-threads pretrain=1 hnm_finetune=1 --directory runs/benchmark --configfile config/config.yaml config/zoo.yaml config/benchmark.yaml
	$(VENV)/bin/snakemake --directory runs/benchmark --configfile config/config.yaml config/zoo.yaml config/benchmark.yaml --report results/report.html

test: setup
	$(VENV)/bin/pytest

lint: setup
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf results logs .snakemake runs
