# The README's commands. Everything installs into .venv on first use (.ci/install).
PY := .venv/bin/python

.PHONY: sample test lint

.venv/.installed: pyproject.toml .ci/install
	bash .ci/install
	touch $@

# torchvision's weights where there is internet; otherwise seeded RANDOM weights, said loudly (a demo still runs).
export/fcn_resnet101.pt: | .venv/.installed
	$(PY) -m export.weights --fallback-random-seed 0

# The main job on a generated sample (H.264, 48 frames, 320x240) through a local tritonserver.
sample: .venv/.installed export/fcn_resnet101.pt
	mkdir -p out
	$(PY) -m stream_client --sample --out out/sample_segmented.mp4 --summary-json out/sample_summary.json

test: .venv/.installed
	$(PY) -m pytest

lint: .venv/.installed
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
