# tubelet: two set-up commands, `make demo` and `make test` (README).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

# important: the venv is (re)built only when pyproject.toml changes; `pip install -e`
# keeps the checkout importable by Ray workers started from it.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[models,filters,dev]"
	# important: rapidocr-onnxruntime requires the GUI opencv-python, which overwrites the cv2 of
	# opencv-python-headless and needs libGL at import; put the headless build's files back.
	$(BIN)/python -m pip install -q --force-reinstall --no-deps \
		"opencv-python-headless==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opencv-python-headless"))')"
	$(BIN)/python -c "import cv2, onnxruntime, rapidocr_onnxruntime, nudenet"
	touch $(STAMP)

demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m jobs.demo --output demo-out

test: venv
	HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m jobs.bench split

clean:
	rm -rf $(VENV) demo-out bench-out .pytest_cache
