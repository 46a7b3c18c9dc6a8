# Two commands for a fresh machine:  make demo  (data -> train -> test -> heatmaps)  and  make test.
# make test-fast leaves out the multi-process and long end-to-end tests (pytest marker "slow").
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)
DEMO_DATA ?= data
ifndef DEMO_RUN
DEMO_RUN := demo-$(shell date +%Y%m%d-%H%M%S)
endif
# Demo settings that finish in a few minutes on 2 CPU cores (quarter resolution, stride-4 stem); --deterministic
# (about 1 % of the time, docs/speed.md) so a fresh clone prints the lines README quotes.
DEMO_FLAGS ?= --data_dir $(DEMO_DATA) --image_size 176 102 --epoch 15 --batch_size 16 --workers 1 --deterministic \
	--save_dir $(DEMO_RUN)

.PHONY: demo test test-fast install clean-venv

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(BIN)/python synthetic.py --out $(DEMO_DATA) --n 500 --seed 0
	$(BIN)/python main.py --model dense_net --fold _Dense_LF --augment cat_elastic --late_fuse True $(DEMO_FLAGS)
	$(BIN)/python visualize_gradcam.py --run outs/$(DEMO_RUN)/fold_Dense_LF --select tp fn --top 1 --sheet --method expected_gradients
	$(BIN)/python visualize_gradcam.py --run outs/$(DEMO_RUN)/fold_Dense_LF --select tp fn --top 1 --sheet --method gradcam

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

clean-venv:
	rm -rf $(VENV)
