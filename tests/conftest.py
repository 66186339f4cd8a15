import argparse
import functools
import os

import pytest
import torch

# Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter; with one, the same tests run the
# compiled kernels. Triton reads this when kernels are defined, so it is set before anything imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two OpenMP threads
    contend and run 5-50x slower. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def kernels_not_interpreted(monkeypatch):
    """The Triton kernels as a process without TRITON_INTERPRET=1 at import has them: built for the GPU, so
    CPU tensors cannot run them (unsetting the variable later changes nothing; this flag is what counts)."""
    from act_lora_fast.kernels.triton import utils

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(utils, "KERNELS_INTERPRETED", False)


@pytest.fixture
def unloadable_model(tmp_path_factory):
    """A folder that passes the model-location check (it has a config.json) but fails if anything loads it:
    for tests that an error comes before any work."""
    folder = tmp_path_factory.mktemp("unloadable-model")
    (folder / "config.json").write_text("{}")
    return str(folder)


@functools.lru_cache(maxsize=None)
def _default_output_folders():
    """The folders the commands write when no output option is given (act-lora-compare, act-lora-demo)."""
    from act_lora_fast.cli.main import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted({action.default for sub in commands.choices.values() for action in sub._actions
                   if action.dest in ("output_dir", "out") and isinstance(action.default, str)})


@pytest.fixture(autouse=True)
def _no_default_output_folder_left_in_the_cwd(request):
    """Issue 21.18: a test that runs a command without an output option runs it in a temporary folder; the
    suite leaves no act-lora-compare/ (or other default output folder) where it was started."""
    cwd = os.getcwd()
    before = set(os.listdir(cwd))
    yield
    left = [name for name in _default_output_folders()
            if name not in before and os.path.exists(os.path.join(cwd, name))]
    assert not left, f"{request.node.nodeid} left {left} in {cwd}: chdir to tmp_path (monkeypatch.chdir)"


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A random tiny Llama folder (4 blocks, hidden 32) with a word-level tokenizer and a chat template."""
    from tests.models import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
