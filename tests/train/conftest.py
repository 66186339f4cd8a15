import pytest

from tests.models import write_sst2_folder, write_tiny_bert


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A saved random 4-block BERT folder with MiniLM's tokenizer."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def sst2_dir(tmp_path_factory):
    """Generated sentiment data in GLUE's SST-2 layout."""
    return write_sst2_folder(tmp_path_factory.mktemp("glue"))
