import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def code_dir(tmp_path):
    """A parent folder whose name looks like a label source: it must never change a label."""
    d = tmp_path / "my_code" / "c5_007"
    d.mkdir(parents=True)
    return d
