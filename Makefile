# Kestrel: `make demo` and `make test` work on a fresh clone; both set everything up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kestrel-installed
PYTEST_ARGS ?=
# pytest-xdist workers: each runs one thread (tests/conftest.py), so workers = the cores; an idle one steals work
PYTEST_WORKERS ?= 2
PYTEST_XDIST = -n $(PYTEST_WORKERS) $(if $(filter 0,$(PYTEST_WORKERS)),,--dist worksteal)

export NO_ALBUMENTATIONS_UPDATE := 1

DEMO_DATA := data/shapes
DEMO_CONFIG := configs/demo/ssdlite_mbv3_shapes.yaml

.PHONY: install test test-all docs docs-serve demo demo-export demo-int8 demo-segment demo-pose demo-ssdlite320 bench bench-grid bench-int8-backbones lint clean

install: $(STAMP)

# Re-runs only when the dependencies change; `make install` is otherwise instant.
# .venv/litert: litert-torch for export --format tflite, a layer of its own (see constraints-litert.txt)
$(STAMP): pyproject.toml constraints.txt constraints-litert.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,docs,openvino,ofa,mobile]'
	rm -rf $(VENV)/litert
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --target $(VENV)/litert -r constraints-litert.txt
	touch $(STAMP)

test: install  ## the suite CI runs (slow checks and the docs' examples excluded)
	$(PY) -m pytest -m "not slow and not docs" $(PYTEST_XDIST) $(PYTEST_ARGS)

test-all: install  ## every test, slow ones included
	$(PY) -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

docs: install  ## every example of the README and the guides run, then the site built into site/ (--strict)
	$(PY) -m pytest -m "docs and not slow" $(PYTEST_XDIST) $(PYTEST_ARGS)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: install  ## the documentation site at http://127.0.0.1:8000, rebuilt on every change
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

$(DEMO_DATA)/coco/annotations/instances_val2017.json: | install
	$(PY) -m tasks.data.synthetic --out $(DEMO_DATA)

demo: install $(DEMO_DATA)/coco/annotations/instances_val2017.json  ## train SSDLite on the synthetic data, then test
	$(PY) -m tasks.detect fit --config $(DEMO_CONFIG)
	$(PY) -m tasks.detect test --config $(DEMO_CONFIG) --ckpt_path best

# After `make demo`: the trained detector as ONNX, INT8 ONNX, OpenVINO and the phone files (LiteRT and ExecuTorch, float
# and INT8; a Core ML package, which runs on Apple devices only), each scored by `test` beside the checkpoint.
DEMO_RUN := runs/demo/detect/lightning_logs
DEMO_FILES := model.onnx model_int8.onnx model.xml model.tflite model_int8.tflite model.pte model_int8.pte
demo-export: install  ## export the demo detector (run make demo first), also for phones, and test every exported file
	$(PY) -m tasks.detect export --config $(DEMO_CONFIG) --ckpt_path best
	$(PY) -m tasks.detect export --config $(DEMO_CONFIG) --ckpt_path best --int8 true
	$(PY) -m tasks.detect export --config $(DEMO_CONFIG) --ckpt_path best --format openvino
	for format in tflite executorch; do for int8 in false true; do \
		$(PY) -m tasks.detect export --config $(DEMO_CONFIG) --ckpt_path best --format $$format --int8 $$int8 || exit 1; \
	done; done
	$(PY) -m tasks.detect export --config $(DEMO_CONFIG) --ckpt_path best --format coreml
	$(PY) -m tasks.detect test --config $(DEMO_CONFIG) --ckpt_path best
	for file in $(DEMO_FILES); do \
		$(PY) -m tasks.detect test --config $(DEMO_CONFIG) --ckpt_path "$$(ls -t $(DEMO_RUN)/*/export/$$file | head -1)" || exit 1; \
	done
	$(PY) -m tasks.reporting compare $$(ls -td $(DEMO_RUN)/version_* | head -8 | tac)
	$(PY) -m tasks.benchmark runtimes $$(ls -t $(DEMO_RUN)/*/checkpoints/best.ckpt | head -1) \
		$$(for file in $(DEMO_FILES); do ls -t $(DEMO_RUN)/*/export/$$file | head -1; done)

# After `make demo`: which INT8 settings cost the demo detector what. Each setting (calibration:kept-in-float)
# is exported beside the default files and scored by `test`; the table compares them with the checkpoint.
INT8_SETTINGS := minmax:[] minmax:[first_conv] minmax:[last_convs] minmax:[first_conv,last_convs] \
	percentile:[] percentile:[first_conv,last_convs]

demo-int8: install  ## INT8 settings compared on the demo detector (run make demo first), each exported and tested
	$(PY) -m tasks.detect test --config $(DEMO_CONFIG) --ckpt_path best
	for setting in $(INT8_SETTINGS); do \
		calibration=$${setting%%:*}; float=$${setting#*:}; \
		name=int8_$$calibration$$(echo "$$float" | tr -d '[]' | tr ',' '\n' | sed 's/^./_&/' | tr -d '\n'); \
		file=$$(dirname "$$(dirname "$$(ls -t $(DEMO_RUN)/*/checkpoints/best.ckpt | head -1)")")/export/$$name.onnx; \
		$(PY) -m tasks.detect export --config $(DEMO_CONFIG) --ckpt_path best --int8 true \
			--int8_calibration $$calibration --int8_float "$$float" --output "$$file" || exit 1; \
		$(PY) -m tasks.detect test --config $(DEMO_CONFIG) --ckpt_path "$$file" || exit 1; \
	done
	$(PY) -m tasks.reporting compare $$(ls -td $(DEMO_RUN)/version_* | head -$$(($(words $(INT8_SETTINGS)) + 1)) | tac)

demo-segment: install $(DEMO_DATA)/coco/annotations/instances_val2017.json  ## DeepLabV3+ on the synthetic VOC folder
	$(PY) -m tasks.segment fit --config configs/demo/deeplabv3plus_mbv2_shapes.yaml
	$(PY) -m tasks.segment test --config configs/demo/deeplabv3plus_mbv2_shapes.yaml --ckpt_path best

demo-pose: install $(DEMO_DATA)/coco/annotations/instances_val2017.json  ## top-down pose on the synthetic keypoints
	$(PY) -m tasks.pose fit --config configs/demo/pose_mbv2_shapes.yaml
	$(PY) -m tasks.pose test --config configs/demo/pose_mbv2_shapes.yaml --ckpt_path best

# torchvision's SSDLite320 layout trained on the shapes: the benchmark gives its weights to torchvision's own model.
demo-ssdlite320: install $(DEMO_DATA)/coco/annotations/instances_val2017.json  ## the detector torchvision's model is compared on
	$(PY) -m tasks.detect fit --config configs/demo/ssdlite320_mbv3_shapes.yaml
	$(PY) -m tasks.detect test --config configs/demo/ssdlite320_mbv3_shapes.yaml --ckpt_path best

# Every demo model in every runtime beside torchvision's references; trained ones (make demo, demo-segment, demo-pose,
# demo-ssdlite320) are scored too. Writes runs/benchmark/benchmark.{md,json} and pareto.png, and its tables into docs/benchmarks/demo.md.
BENCH_CONFIGS := configs/demo/ssdlite_mbv3_shapes.yaml configs/demo/ssdlite320_mbv3_shapes.yaml \
	configs/demo/deeplabv3plus_mbv2_shapes.yaml configs/demo/pose_mbv2_shapes.yaml

bench: install $(DEMO_DATA)/coco/annotations/instances_val2017.json  ## speed and accuracy, measured (never asserted in tests)
	$(PY) -m tasks.benchmark $(BENCH_CONFIGS) --ckpt_path best --markdown docs/benchmarks/demo.md
	$(PY) -m tasks.benchmark training --markdown docs/benchmarks/demo.md

bench-grid: install  ## SSDLite on MobileNetV2 / V3: width multiplier x input resolution
	$(PY) -m tasks.benchmark --grid --markdown docs/benchmarks/demo.md

bench-int8-backbones: install $(DEMO_DATA)/coco/annotations/instances_val2017.json  ## fp32, post-training INT8 and QAT INT8 mAP of SSDLite on MobileNetV1/V2/V3/EfficientNet-Lite0 (2 hours)
	$(PY) -m tasks.benchmark quantization --markdown docs/benchmarks/int8-backbones.md

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
