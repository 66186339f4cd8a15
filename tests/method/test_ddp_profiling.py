"""Under torch.distributed (2 gloo processes on CPU, localhost) every rank gets identical scores, equal to one
process profiling all the batches: the sums and counts are all-reduced, not the per-rank means."""
import json
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tests.models import tiny_model, token_batch  # noqa: F401

from act_lora_fast import profile_activations, profile_gradients

pytestmark = [pytest.mark.multiprocess, pytest.mark.usefixtures("one_thread")]

WORLD = 2


def _batches():
    # 3 batches of different widths and padding; rank 0 gets two, rank 1 one: unequal shards on purpose
    return [token_batch(batch=3, seq=9 + 2 * s, seed=20 + s) for s in range(3)]


def _shard(rank):
    return [b for i, b in enumerate(_batches()) if i % WORLD == rank]


def _worker(rank, port, out_dir):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = tiny_model("llama")
        results = {
            "input_norm": profile_activations(model, _shard(rank), progress=False).to_dict(),
            "block_output": profile_activations(model, _shard(rank), metric="block_output", progress=False).to_dict(),
            "gradient": profile_gradients(model, _shard(rank), seed=4, progress=False).to_dict(),
        }
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump(results, handle)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_two_gloo_ranks_agree_with_one_process(tmp_path):
    context = mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 120
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("distributed profiling did not finish within 120 s")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert ranks[0] == ranks[1]  # identical on every rank, bit for bit

    model = tiny_model("llama")
    single = {
        "input_norm": profile_activations(model, _batches(), progress=False),
        "block_output": profile_activations(model, _batches(), metric="block_output", progress=False),
        "gradient": profile_gradients(model, _batches(), seed=4, progress=False),
    }
    alone = profile_activations(model, _shard(0), progress=False)
    for key, expected in single.items():
        got = ranks[0][key]
        assert got["num_batches"] == 3 and got["num_tokens"] == expected.num_tokens
        assert got["scores"] == pytest.approx(expected.scores, rel=1e-6)
        assert got["module_scores"] == pytest.approx(expected.module_scores, rel=1e-6)
        assert got["meta"]["world_size"] == 2
    assert ranks[0]["input_norm"]["scores"] != pytest.approx(alone.scores, rel=1e-6)  # rank 0 alone differs
