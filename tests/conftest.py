import sys
from pathlib import Path

import pytest

# Test helpers (tests/linear.py) are imported as plain modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """The ../shared folder beside the repository (CI has it; a user's clone does not)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED}")
    return SHARED
