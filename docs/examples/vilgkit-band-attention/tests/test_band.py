"""The example plugin's own tests: vilgkit's conformance suite plus one behaviour check."""

from vilgkit_band import BandAttention

from vilgkit.layout import Layout
from vilgkit.testing.conformance import *  # noqa: F401,F403  (run with --vilgkit-plugin=band)


def test_band_width_limits_target_keys():
    layout = Layout.text_to_image(2, 2, 2)
    mask = BandAttention(width=2).allowed(0, 1, layout)
    assert mask[5].tolist() == [True, True, False, False, True, True]
