"""One path from recipe to objects: class names resolved in the registry of their key, objects built by jsonargparse."""

from __future__ import annotations

import pytest

from vilgkit.engine.config import TrainerConfig
from vilgkit.errors import RecipeError
from vilgkit.recipe import build, load_components, parse_recipe


@pytest.fixture(autouse=True, scope="module")
def _components():
    load_components()


def test_a_short_name_is_looked_up_in_the_registry_of_its_key_only(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("generator: {class_path: ShapesDataset}\nstages: []\n")  # a registered data set
    with pytest.raises(
        RecipeError,
        match=r"generator\.class_path: unknown class_path 'ShapesDataset': not a class "
        r"of registry 'generator'\. Available: .*UnifiedTransformer",
    ):
        parse_recipe([path])
    path.write_text("stages:\n  - {class_path: TrainGenerator, init_args: {data: {class_path: UnifiedTransformer}}}\n")
    with pytest.raises(RecipeError, match=r"stages\.0\.init_args\.data\.class_path: .* registry 'dataset'"):
        parse_recipe([path])


def test_build_returns_the_dataclass_the_signature_promises():
    [stage] = build(
        "stages", [{"class_path": "TrainGenerator", "init_args": {"trainer": {"steps": 3, "betas": [0.8, 0.9]}}}]
    )
    assert isinstance(stage.trainer, TrainerConfig)
    assert (stage.trainer.steps, stage.trainer.betas, stage.trainer.lr) == (3, (0.8, 0.9), TrainerConfig().lr)
    with pytest.raises(RecipeError, match=r"trainer.*steps"):
        build("stages", [{"class_path": "TrainGenerator", "init_args": {"trainer": {"steps": "many"}}}])


def test_build_checks_types_and_keys_like_parse_recipe():
    attention = {"class_path": "SparseAttention", "init_args": {"kernel_size": 3}}
    node = {
        "class_path": "UnifiedTransformer",
        "init_args": {
            "text_vocab_size": 8,
            "image_vocab_size": 8,
            "hidden_size": 8,
            "num_layers": 1,
            "num_heads": 2,
            "max_text_len": 6,
            "max_image_grid": 2,
            "attention": attention,
        },
    }
    model = build("generator", node)
    assert type(model.attention).__name__ == "SparseAttention" and model.attention.kernel_size == 3
    with pytest.raises(RecipeError, match=r"generator\.init_args\.hiden_size: UnifiedTransformer does not take"):
        build("generator", {**node, "init_args": {**node["init_args"], "hiden_size": 8}})
    with pytest.raises(RecipeError, match="not a registered class"):
        build("generator", {**node, "class_path": "subprocess.Popen"}, registered_only=True)


def test_trainer_takes_only_a_trainer_config(tmp_path):
    from torch import nn

    from vilgkit.engine.trainer import Trainer

    class Tiny(nn.Linear):
        def training_losses(self, batch):
            return {}

    with pytest.raises(TypeError, match="Trainer needs a TrainerConfig, got dict"):
        Trainer(Tiny(1, 1), [], tmp_path, None, {"steps": 1})
