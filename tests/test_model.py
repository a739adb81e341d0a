"""Every registered architecture: shapes, gradients, registry errors; weights files: safetensors only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fer_core.model import MODEL_CONFIGS, count_params, create_model, list_models
from fer_core.weights import WeightsError, card_path, load_model, save_model


@pytest.mark.parametrize("name", list_models())
class TestArchitectures:
    def test_forward_shape_and_gradients(self, name: str) -> None:
        torch.manual_seed(0)
        model = create_model(name)
        x = torch.randn(2, 1, 48, 48)
        logits = model(x)
        assert logits.shape == (2, 7)
        assert torch.isfinite(logits).all()
        logits.sum().backward()
        assert all(p.grad is not None for p in model.parameters())

    def test_features_and_head_compose_to_forward(self, name: str) -> None:
        model = create_model(name).eval()
        x = torch.randn(3, 1, 48, 48)
        features = model.forward_features(x)
        assert features.shape[1] == model.num_features
        torch.testing.assert_close(model.forward_head(features), model(x))
        assert model.forward_head(features, pre_logits=True).shape == (3, model.num_features)

    def test_the_head_is_global_average_pooling_then_one_linear_layer(self, name: str) -> None:
        """What makes the CAM of the last feature map its Grad-CAM (fer_core.explain): in eval mode
        the logits are ``fc(mean over cells of the last feature map)``, nothing else."""
        model = create_model(name).eval()
        features = model.forward_features(torch.randn(3, 1, 48, 48))
        linear = features.mean(dim=(2, 3)) @ model.fc.weight.T + model.fc.bias
        torch.testing.assert_close(model.forward_head(features), linear, rtol=1e-5, atol=1e-5)
        assert model.fc.weight.shape == (7, model.num_features)


@pytest.mark.slow
def test_every_architecture_trains_on_odd_batches_in_channels_last() -> None:
    """Training runs channels-last, and an epoch's last batch can have any size. Some PyTorch
    CPU kernels crash the process (not an exception) on such batches, so the steps run in a
    child process that reports which architecture and batch size got through."""
    import subprocess
    import sys

    from conftest import REPO

    script = (
        "import sys, torch, torch.nn.functional as F\n"
        "from fer_core.model import create_model, list_models\n"
        "for name in list_models():\n"
        "    model = create_model(name).to(memory_format=torch.channels_last)\n"
        "    for batch in (3, 15):\n"
        "        x = torch.randn(batch, 1, 48, 48).contiguous(memory_format=torch.channels_last)\n"
        "        F.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long)).backward()\n"
        "        print(name, batch, flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    trained = done.stdout.split("\n")[:-1]
    assert done.returncode == 0, f"crashed after {trained[-1:]}: {done.stderr[-1500:]}"
    assert trained == [f"{name} {batch}" for name in list_models() for batch in (3, 15)]


class TestRegistry:
    def test_unknown_name_lists_the_choices(self) -> None:
        with pytest.raises(ValueError, match=r"unknown model 'resnet50'; choose one of \['fer_cnn_small'"):
            create_model("resnet50")

    def test_num_classes_override(self) -> None:
        assert create_model("fer_tiny", num_classes=6)(torch.zeros(1, 1, 48, 48)).shape == (1, 6)

    def test_sizes_grow_with_the_variant(self) -> None:
        sizes = [count_params(create_model(name)) for name in ("fer_tiny", "fer_cnn_small", "fer_resnet_wide")]
        assert sizes == sorted(sizes) and len(set(sizes)) == 3
        assert set(MODEL_CONFIGS) == set(list_models())


class TestWeightsFiles:
    def _card(self) -> dict:
        return {"architecture": "fer_tiny",
                "labels": ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]}

    def test_round_trip(self, tmp_path: Path) -> None:
        model = create_model("fer_tiny").eval()
        path = save_model(model, tmp_path / "m.safetensors", self._card())
        loaded, card = load_model(path)
        x = torch.randn(4, 1, 48, 48)
        torch.testing.assert_close(loaded(x), model(x))
        assert card["architecture"] == "fer_tiny" and card_path(path).is_file()

    @pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
    def test_pickled_files_are_refused(self, tmp_path: Path, suffix: str) -> None:
        path = tmp_path / f"model{suffix}"
        torch.save(create_model("fer_tiny").state_dict(), path)
        with pytest.raises(WeightsError, match="refusing to load a pickled PyTorch file"):
            load_model(path)

    def test_a_pickle_renamed_safetensors_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "model.safetensors"
        torch.save(create_model("fer_tiny").state_dict(), path)
        card_path(path).write_text("{}")
        with pytest.raises(WeightsError, match="not safetensors; refusing to unpickle"):
            load_model(path)

    def test_a_legacy_pickle_renamed_safetensors_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "model.safetensors"  # the pre-zip format starts with 0x80, the pickle opcode
        torch.save(create_model("fer_tiny").state_dict(), path, _use_new_zipfile_serialization=False)
        card_path(path).write_text("{}")
        assert path.read_bytes()[:1] == b"\x80"
        with pytest.raises(WeightsError, match="not safetensors; refusing to unpickle"):
            load_model(path)

    def test_a_header_length_ending_in_0x80_is_still_safetensors(self, tmp_path: Path) -> None:
        # The first byte of a safetensors file is the low byte of its header length: 0x80 there
        # is as legitimate as any other value and must not be taken for a pickle.
        from safetensors.torch import save_file

        model = create_model("fer_tiny").eval()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        for pad in range(256):
            path = tmp_path / "m.safetensors"
            save_file(state, str(path), metadata={"pad": "x" * pad})
            if path.read_bytes()[:1] == b"\x80":
                break
        else:
            pytest.fail("no padding gave a header length ending in 0x80")
        card_path(path).write_text(json.dumps(self._card()))
        loaded, _ = load_model(path)
        x = torch.randn(2, 1, 48, 48)
        torch.testing.assert_close(loaded(x), model(x))

    @pytest.mark.parametrize("content", [b"", b"not weights at all", (10**6).to_bytes(8, "little") + b'{"a": 1}'])
    def test_other_files_are_not_safetensors(self, tmp_path: Path, content: bytes) -> None:
        path = tmp_path / "model.safetensors"  # empty, text, and a header longer than the file
        path.write_bytes(content)
        card_path(path).write_text(json.dumps(self._card()))
        with pytest.raises(WeightsError, match="model.safetensors is not a safetensors file"):
            load_model(path)

    def test_missing_file_and_missing_card(self, tmp_path: Path) -> None:
        with pytest.raises(WeightsError, match="weights file not found"):
            load_model(tmp_path / "nothing.safetensors")
        path = save_model(create_model("fer_tiny"), tmp_path / "m.safetensors", self._card())
        card_path(path).unlink()
        with pytest.raises(WeightsError, match="has no model card"):
            load_model(path)

    def test_card_that_does_not_match_the_weights(self, tmp_path: Path) -> None:
        path = save_model(create_model("fer_tiny"), tmp_path / "m.safetensors", self._card())
        card_path(path).write_text('{"architecture": "fer_cnn_small", "labels": ["a", "b", "c", "d", "e", "f", "g"]}')
        with pytest.raises(WeightsError, match="does not match its model card"):
            load_model(path)
