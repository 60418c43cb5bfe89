"""sam_deblur_cli.train: learning, exact resume, aligned augmentation, mask dropout, --init,
the exported checkpoint against the spec-written reference."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import oracles
import pytest
import torch
from train_data import content_segmask, tiny_config, write_pairs

from sam_deblur_cli.amg import RecipeOverrides
from sam_deblur_cli.checkpoints import load_strict, read_state_dict
from sam_deblur_cli.errors import CheckpointError, UsageError
from sam_deblur_cli.masks.encode import labels_from_segmask
from sam_deblur_cli.nets import NetConfig, build_network
from sam_deblur_cli.nets.map import sample_dropped
from sam_deblur_cli.train.config import check
from sam_deblur_cli.train.data import CropDataset, collate, dihedral
from sam_deblur_cli.train.loop import Callbacks, Trainer, psnr_loss, validate
from sam_deblur_cli.train.models import build_model, load_init
from sam_deblur_cli.train.session import load_images, mask_source, train_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(name="pairs", scope="module")
def pairs_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs"))


def _images(pairs: Path, variant: str) -> list:  # type: ignore[type-arg]
    cfg = check(tiny_config(pairs, pairs.parent / "unused", variant))
    return load_images(pairs, cfg, mask_source(cfg, "cpu"))


@pytest.mark.parametrize("variant", ["plain", "cat", "map"])
def test_each_variant_overfits_two_photo_pairs(pairs: Path, tmp_path: Path, variant: str) -> None:
    cfg = tiny_config(pairs, tmp_path / "run", variant, steps=100, val=str(pairs), val_every=100)
    images = _images(pairs, variant)
    torch.manual_seed(cfg.seed)  # the Trainer's initial weights
    before, _ = validate(build_model(check(cfg)), images, torch.device("cpu"))
    outcome = train_run(cfg, register=False)
    after = float(outcome.result.rows[-1]["val_psnr"])
    assert after >= before + 3.0, (before, after)
    assert outcome.result.final_loss is not None and outcome.result.final_loss < 0  # -PSNR


def test_psnr_loss_is_minus_psnr_at_peak_1() -> None:
    pred = torch.full((2, 3, 4, 4), 0.5)
    target = pred.clone()
    target[0] += 0.1  # mse 0.01: 20 dB
    target[1] += 0.01  # mse 1e-4: 40 dB
    expected = -(10 * math.log10(1 / (0.01 + 1e-8)) + 10 * math.log10(1 / (1e-4 + 1e-8))) / 2
    loss = psnr_loss(pred.half(), target)  # 0.5 is exact in fp16; the loss runs in fp32
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(expected, abs=1e-4)


def test_interrupted_and_resumed_run_ends_bit_identical(pairs: Path, tmp_path: Path) -> None:
    changes = {"steps": 12, "accum": 2, "ema": 0.9, "workers": 2, "save_every": 5, "keep": 1}
    straight = train_run(tiny_config(pairs, tmp_path / "a", **changes), register=False)
    holder: list[Trainer] = []

    def stop_at_7(step: int, total: int) -> None:
        if step == 7:
            holder[0].request_stop()

    first = train_run(
        tiny_config(pairs, tmp_path / "b", **changes),
        register=False,
        callbacks=Callbacks(on_step=stop_at_7),
        trainer_hook=holder.append,
    )
    assert first.result.interrupted and first.result.step == 7 and first.model_path is None
    assert not (tmp_path / "b" / "model.pth").exists()
    resumed = train_run(None, resume=tmp_path / "b", register=False)
    assert resumed.result.step == 12 and not resumed.result.interrupted
    a = read_state_dict(tmp_path / "a" / "model.pth")
    b = read_state_dict(tmp_path / "b" / "model.pth")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.result.rows[-1]["step"] == resumed.result.rows[-1]["step"] == 12
    steps = [line.split(",")[0] for line in (tmp_path / "b" / "log.csv").read_text().splitlines()]
    assert steps == ["step", "5", "10", "12"]  # rows after the interruption cut, none twice
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == [
        "last.pt",
        "step_0000012.pt",
    ]


def test_training_mask_dropout_on_crops_drops_floor_pm_and_equals_the_oracle(pairs: Path) -> None:
    dataset = CropDataset(_images(pairs, "map"), 16, seed=3)
    _, _, labels = collate([dataset[k] for k in range(6)])
    net = build_model(check(tiny_config(pairs, pairs, "map", mask_dropout=0.5)))
    assert net.training and net.mask_dropout == 0.5
    image = torch.rand(6, 3, 16, 16)
    torch.manual_seed(11)
    out = net.mask_average(image, labels)  # type: ignore[operator]
    torch.manual_seed(11)
    dropped = sample_dropped(labels, 0.5)
    seg = net.pre_seg_in(net.pre_seg(image))  # type: ignore[operator]
    for i in range(6):
        present = torch.unique(labels[i][labels[i] >= 0])
        assert int(dropped[i].sum()) == len(present) // 2  # floor(p * M), M in this crop
        assert set(dropped[i].nonzero()[:, 0].tolist()) <= set(present.tolist())
        ids = dropped[i].nonzero()[:, 0].tolist()
        ref = oracles.dense_map(seg[i : i + 1], oracles.label_masks(labels[i]), dropped=ids)
        torch.testing.assert_close(out[i : i + 1], ref, rtol=1e-5, atol=1e-6)
    counts = {len(torch.unique(labels[i])) for i in range(6)}
    assert len(counts) > 1  # the crops hold different numbers of groups


@pytest.mark.parametrize("variant", ["cat", "map"])
def test_every_dihedral_transform_keeps_masks_aligned(pairs: Path, variant: str) -> None:
    dataset = CropDataset(_images(pairs, variant), 32, seed=0)
    seen: set[int] = set()
    k = 0
    while len(seen) < 8:
        index, top, left, transform = dataset.plan(k)
        blurred, sharp, guide = dataset[k]
        source = dataset.images[index]
        window = np.s_[top : top + 32, left : left + 32]
        for got, full in ((blurred, source.blurred), (sharp, source.sharp)):
            assert np.array_equal(got.permute(1, 2, 0).numpy(), dihedral(full[window], transform))
        sharp_hwc = sharp.permute(1, 2, 0).numpy()
        expected = content_segmask(sharp_hwc)  # the mask the transformed image implies
        if variant == "cat":
            assert np.array_equal(guide[0].numpy(), expected), transform
        else:
            # same partition: the label of a pixel follows from its own gray value
            got = guide.numpy()
            assert np.array_equal(labels_from_segmask(expected) >= 0, got >= 0)
            for value in np.unique(expected):
                assert len(np.unique(got[expected == value])) == 1, transform
        seen.add(transform)
        k += 1
    # upstream's defect (rot90 for the masks, a transpose for the image) breaks alignment
    mask = content_segmask(np.asarray(sharp.permute(1, 2, 0)))
    assert not np.array_equal(np.rot90(mask), dihedral(mask, 4))


def test_dihedral_group_is_the_eight_flips_and_transposes() -> None:
    a = np.arange(12).reshape(3, 4)
    results = {dihedral(a, k).tobytes() + bytes(dihedral(a, k).shape) for k in range(8)}
    assert len(results) == 8
    assert np.array_equal(dihedral(a, 4), a.T)
    assert np.array_equal(dihedral(a, 5), a[:, ::-1].T)


def _plain_state_dict(seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = build_network(oracle_config("plain"))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(0, 0.2)  # make every block matter
    return net.state_dict()


def oracle_config(variant: str) -> NetConfig:
    return check(tiny_config(Path("."), Path("."), variant)).net


@pytest.mark.parametrize("variant", ["cat", "map"])
def test_init_from_a_plain_net_computes_the_plain_net(variant: str) -> None:
    plain_sd = _plain_state_dict()
    plain = build_network(oracle_config("plain"))
    load_strict(plain, plain_sd)
    net = build_network(oracle_config(variant))
    assert load_init(net, plain_sd) == "from-plain"
    image = torch.rand(2, 3, 40, 36)
    guide = (
        torch.randint(0, 256, (2, 1, 40, 36)).float() / 255
        if variant == "cat"
        else torch.randint(0, 5, (2, 40, 36))
    )
    with torch.no_grad():
        expected = plain(image)
        torch.testing.assert_close(net(image, guide), expected, rtol=0, atol=1e-6)
        if variant == "map":  # the pooled channels enter through intro's zero weights only
            for p in (*net.pre_seg.parameters(), *net.pre_seg_in.parameters()):  # type: ignore[union-attr]
                p.add_(torch.randn_like(p))
            torch.testing.assert_close(net(image, guide), expected, rtol=0, atol=1e-6)
    # once intro's extra channels move, the guide counts
    with torch.no_grad():
        net.intro.weight[:, 3:] = 0.5  # type: ignore[index,union-attr]
        assert not torch.allclose(net(image, guide), expected, atol=1e-3)


def test_init_of_the_same_architecture_is_strict_and_a_wrong_one_is_refused() -> None:
    plain_sd = _plain_state_dict()
    net = build_network(oracle_config("plain"))
    assert load_init(net, plain_sd) == "strict"
    wider = {k: v for k, v in build_network(oracle_config("map")).state_dict().items()}
    with pytest.raises(CheckpointError, match="--init does not fit"):
        load_init(build_network(oracle_config("cat")), wider)


def test_exported_checkpoint_loads_into_the_spec_reference(pairs: Path, tmp_path: Path) -> None:
    # four levels, as the spec's padding to 16 assumes
    cfg = tiny_config(pairs, tmp_path / "run", "map", steps=3)
    cfg = replace(cfg, net=replace(cfg.net, enc_blk_nums=(1, 1, 1, 1), dec_blk_nums=(1, 1, 1, 1)))
    outcome = train_run(cfg, register=False)
    assert outcome.model_path == tmp_path / "run" / "model.pth"
    raw = torch.load(outcome.model_path, map_location="cpu", weights_only=True)
    assert list(raw) == ["params"]  # upstream's BasicSR format
    sd = raw["params"]
    net = build_network(check(cfg).net)
    load_strict(net, sd)  # every upstream key, every shape
    image = torch.rand(1, 3, 45, 50)
    labels = torch.randint(0, 6, (1, 45, 50))
    with torch.no_grad():
        ours = net(image, labels)
        ref = oracles.forward(sd, "map", image, labels, tlc=False)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_refused_before_anything_is_written(pairs: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="smaller than the 128 x 128 crop"):
        train_run(tiny_config(pairs, tmp_path / "r1", crop=128), register=False)
    assert not (tmp_path / "r1").exists()
    existing = tmp_path / "r2"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="--resume"):
        train_run(tiny_config(pairs, existing), register=False)
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    (empty / "input").mkdir(parents=True)
    (empty / "target").mkdir()
    with pytest.raises(UsageError, match="no usable"):
        train_run(tiny_config(empty, tmp_path / "r3", "plain"), register=False)
    (empty / "input" / "x.png").write_bytes((pairs / "input" / "a.png").read_bytes())
    with pytest.raises(UsageError, match="No sharp image named x"):
        train_run(tiny_config(empty, tmp_path / "r3", "plain"), register=False)
    assert not (tmp_path / "r3").exists()


def test_a_corrupt_checkpoint_is_one_clear_error(pairs: Path, tmp_path: Path) -> None:
    train_run(tiny_config(pairs, tmp_path / "run", "plain", steps=2), register=False)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="damaged"):
        train_run(None, resume=tmp_path / "run", register=False)


def test_generated_masks_run_sam_once_per_image_and_predeblur_restores_first(
    tiny_env: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--masks-from sam: SAM on the blurred image, once (the mask cache); predeblur:MODEL:
    SAM on that model's restoration of it."""
    from tiny_models import small_photo

    from sam_deblur_cli.masks import MaskGenerator
    from sam_deblur_cli.metrics import to_uint8
    from sam_deblur_cli.pipeline import Deblurrer, DeblurSettings
    from sam_deblur_cli.train.data import generated_masks

    seen: list[np.ndarray] = []
    real = MaskGenerator._generate

    def spy(self: MaskGenerator, rgb_uint8: np.ndarray) -> object:
        seen.append(rgb_uint8.copy())
        return real(self, rgb_uint8)

    monkeypatch.setattr(MaskGenerator, "_generate", spy)
    photo = small_photo("astronaut", 16)
    make = generated_masks("sam-deblur-gopro")
    first = make("a", photo, None)  # type: ignore[arg-type]
    again = make("a", photo, None)  # type: ignore[arg-type]
    assert len(seen) == 1 and first.count > 0
    np.testing.assert_array_equal(first.labels, again.labels)
    np.testing.assert_array_equal(seen[0], photo)  # the blurred photo itself (RGB here)

    make = generated_masks("sam-deblur-gopro", predeblur="nafnet-gopro")
    make("a", photo, None)  # type: ignore[arg-type]
    model = Deblurrer(
        DeblurSettings(recipe=RecipeOverrides(model="nafnet-gopro"), device="cpu", precision="fp32")
    )
    restored = to_uint8(model.deblur(photo.astype(np.float32) / 255))
    assert len(seen) == 2 and not np.array_equal(restored, photo)
    np.testing.assert_array_equal(seen[1], restored)


def test_log_rows_also_go_to_tensorboard_when_it_is_installed(pairs: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    done = train_run(tiny_config(pairs, tmp_path / "run", steps=4, log_every=2), register=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("loss")]
    expected = [(int(r["step"]), float(r["loss"])) for r in done.result.rows]
    assert [s for s, _ in losses] == [s for s, _ in expected] == [2, 4]
    assert [v for _, v in losses] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert "lr" in events.Tags()["scalars"]
