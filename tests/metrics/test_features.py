"""FID feature extractors: Inception weights from a local file (never downloaded), the Shapes CNN."""

from __future__ import annotations

import pytest
import torch

from vilgkit.metrics import FID, InceptionFeatureExtractor, ShapesFeatureExtractor, build_feature_extractor
from vilgkit.metrics.inception import build_fid_inception, default_fid_weights_path, pool3_features


def test_missing_inception_weights_names_the_expected_path(tmp_path, monkeypatch):
    missing = tmp_path / "weights" / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        InceptionFeatureExtractor(str(missing))
    monkeypatch.setenv("VILGKIT_FID_WEIGHTS", str(tmp_path / "elsewhere.pth"))
    assert default_fid_weights_path() == tmp_path / "elsewhere.pth"
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "elsewhere.pth")):
        InceptionFeatureExtractor()
    with pytest.raises(FileNotFoundError, match="elsewhere.pth"):
        FID(extractor="inception").update(generated=torch.zeros(2, 3, 16, 16))


def test_inception_loads_published_key_layout(tmp_path):
    # A checkpoint in the published layout (torchvision names, 1008-way fc), written the way
    # pytorch-fid's file is: a plain state dict for torch.save.
    torch.manual_seed(0)
    reference = build_fid_inception().eval()
    with torch.no_grad():  # non-trivial BN statistics, so a skipped buffer would show
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = reference.state_dict()
    assert "fc.weight" in state and state["fc.weight"].shape == (1008, 2048)
    assert "Mixed_7c.branch_pool.conv.weight" in state
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    extractor = InceptionFeatureExtractor(str(path))
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    feats = extractor(images)
    assert feats.shape == (1, 2048)
    with torch.no_grad():  # the same forward path through the network the file was written from
        expected = pool3_features(reference, images)
    torch.testing.assert_close(feats, expected)
    # A file that is not an Inception state dict is refused.
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not an FID Inception state dict"):
        InceptionFeatureExtractor(str(tmp_path / "bad.pth"))


def test_fid_variant_pools_like_tensorflow():
    net = build_fid_inception()
    x = torch.ones(1, 2048, 4, 4)
    # count_include_pad=False: an all-ones map stays all ones at the border after average pooling.
    pooled = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    assert torch.equal(pooled, x)
    assert net.Mixed_7c.max_pool and not net.Mixed_7b.max_pool


def test_shapes_extractor_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ShapesFeatureExtractor(input_size=32, width=8, cell_dim=4).eval()
    model.save(tmp_path / "feat")
    loaded = build_feature_extractor("shapes", str(tmp_path / "feat"))
    images = torch.rand(3, 3, 48, 48) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))
    assert loaded(images).shape == (3, model.feature_dim) == (3, 36)
    shape, color, size = loaded.logits(loaded(images))
    assert shape.shape == (3, 9, 5) and color.shape == (3, 9, 8) and size.shape == (3, 9, 3)
    with pytest.raises(FileNotFoundError, match="TrainShapesFeatures"):
        ShapesFeatureExtractor.load(tmp_path / "nothing")
    with pytest.raises(ValueError, match="needs `weights`"):
        build_feature_extractor("shapes")
