"""Any upload the server accepts costs a bounded amount of memory to decode: the costliest files at the pixel caps and
a 12 MP phone photo (bench/bench_uploads.py makes them), each decoded in a fresh process, raise its peak RSS by at
most MAX_GROWTH."""

import bench_uploads  # bench/, on pytest's pythonpath
import pytest

from resnet.studio import limits

MAX_GROWTH = 150 * 2**20  # bytes of peak RSS one upload may add, against the same process decoding a 32 x 32 PNG


@pytest.mark.e2e
@pytest.mark.slow
def test_the_costliest_accepted_uploads_stay_within_the_memory_budget(tmp_path):
    paths = bench_uploads.worst_uploads(tmp_path, limits.ServerLimits.defaults())
    _, baseline = bench_uploads.decode_cost(paths.pop("baseline"))
    growth = {name: bench_uploads.decode_cost(path)[1] - baseline for name, path in paths.items()}  # each is accepted: no error
    assert len(growth) >= 9, sorted(growth)
    assert max(growth.values()) <= MAX_GROWTH, {name: f"+{g / 2**20:.0f} MiB" for name, g in growth.items()}
