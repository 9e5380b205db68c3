"""vilgkit.testing's conformance checks, restricted to the attention patterns (fast to run here)."""

import pytest

from vilgkit.testing.conformance import (  # noqa: F401
    test_attention_pattern_contract,
    test_component_builds,
    test_unknown_argument_rejected,
)

pytestmark = pytest.mark.vilgkit_registry("attention_pattern")
