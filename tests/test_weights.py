"""weights.py: the manifest, the cache, Hub downloads through a loopback Hub, sha256, imports."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from hub_server import COMMIT, FakeHub, Published, tiny_state_dict, torch_bytes

from sam_deblur_cli import weights
from sam_deblur_cli.errors import (
    CheckpointError,
    ChecksumError,
    DownloadError,
    SetupError,
    UsageError,
    WeightsNotFoundError,
)
from sam_deblur_cli.nets import MASK_VALUE_UPSTREAM, NetConfig


class Recorder:
    """A progress callback that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int | None]] = []

    def __call__(self, label: str, done: int, total: int | None) -> None:
        self.calls.append((label, done, total))

    def last(self, label: str) -> tuple[int, int | None]:
        done = [(d, t) for lab, d, t in self.calls if lab == label]
        assert done, f"no progress reported for {label!r}: {sorted({c[0] for c in self.calls})}"
        return done[-1]


def _hub_files() -> list[Path]:
    """Blobs and snapshot links in the Hub cache (dangling links included)."""
    found = []
    for part in ("blobs", "snapshots"):
        found += [p for p in weights.hub_cache_dir().rglob(f"{part}/**/*") if not p.is_dir()]
    return sorted(found)


# --------------------------------------------------------------------------- the real manifest


def test_packaged_manifest_records_the_published_facts() -> None:
    manifest = weights.load_manifest()
    assert manifest.path.name == "weights.toml"
    assert set(manifest.names("sam")) == {"sam-vit-b", "sam-vit-l", "sam-vit-h"}
    vit_h = manifest.get("sam-vit-h")
    assert vit_h.arch == "vit_h"
    assert vit_h.sha256 == "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"
    assert vit_h.size == 2564550879
    assert vit_h.source == weights.HubSource(
        "ybelkada/segment-anything",
        "7790786db131bcdc639f24a915d9f2c331d843ee",
        "checkpoints/sam_vit_h_4b8939.pth",
    )
    w64 = manifest.get("nafnet-gopro-width64")
    assert w64.net_config() == NetConfig(variant="plain", width=64)
    assert w64.sha256.startswith("329d3ab4") and w64.size == 271778961
    assert not w64.needs_masks and w64.recipe is None


def test_default_model_is_map_with_the_upstream_recipe_and_tlc() -> None:
    entry = weights.load_manifest().get("segnafnet-gopro")
    assert entry.net_config() == NetConfig(variant="map", width=32, seg_channel=2)
    assert entry.tlc is True and entry.needs_masks
    assert entry.recipe is not None
    assert (entry.recipe.sam, entry.recipe.channel_order) == ("sam-vit-h", "bgr")
    assert entry.recipe.amg == {
        "points_per_side": 32,
        "points_per_batch": 64,
        "pred_iou_thresh": 0.88,
        "stability_score_thresh": 0.95,
        "stability_score_offset": 1.0,
        "box_nms_thresh": 0.7,
        "crop_n_layers": 0,
        "min_mask_region_area": 0,
    }
    # Drive-hosted: nothing pinned yet, the authors' page and file name recorded.
    assert entry.sha256 == "" and entry.size is None and not entry.on_hub
    assert isinstance(entry.source, weights.PageSource)
    assert entry.source.file == "SegNAFNet-GoPro.pth"
    assert "github.com/HPLQAQ/SAM-Deblur" in entry.source.page
    others = ("masknafnet-gopro", "nafnet-gopro", "segnafnet-nodropout-gopro")
    variants = [weights.load_manifest().get(name).net_config().variant for name in others]
    assert variants == ["cat", "plain", "map"]


def test_entries_are_hashable_and_sam_entries_have_no_network() -> None:
    manifest = weights.load_manifest()
    assert len({hash(entry) for entry in manifest}) == len(manifest)
    recipe = manifest.get("masknafnet-gopro").recipe
    assert recipe is not None
    # The pipeline keys shared masks on the recipe and applies overrides with replace().
    assert json.loads(json.dumps(dataclasses.asdict(recipe)))["amg"]["points_per_side"] == 32
    assert dataclasses.replace(recipe, channel_order="rgb").amg == recipe.amg
    with pytest.raises(UsageError, match="sam-vit-b is a sam model"):
        manifest.get("sam-vit-b").net_config()


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(UsageError, match=r"'nope'.*segnafnet-gopro.*sam-deblur weights list"):
        weights.load_manifest().get("nope")


def test_manifest_override_and_cache_root_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        '[models.only]\nkind = "sam"\narch = "vit_b"\nlicense = "x"\nhomepage = "y"\n'
        'source = { page = "https://example.invalid", file = "a.pth" }\n'
    )
    monkeypatch.setenv("SAM_DEBLUR_WEIGHTS", str(path))
    assert weights.load_manifest().names() == ["only"]
    monkeypatch.setenv("SAM_DEBLUR_HOME", str(tmp_path / "home"))
    assert weights.cache_root() == tmp_path / "home"
    monkeypatch.delenv("SAM_DEBLUR_HOME")
    assert "sam-deblur" in str(weights.cache_root())


_GOOD = (
    '[models.m]\nkind = "deblur"\nlicense = "x"\nhomepage = "y"\n'
    'sha256 = "' + "a" * 64 + '"\n'
    'source = { hub = "o/r", revision = "' + "0" * 40 + '", file = "m.pth" }\n'
    'net = { variant = "plain", width = 8 }\n'
)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("\nnet =", "\ncolour = 1\nnet ="), r"models\.m: unknown key\(s\) colour"),
        (("a" * 64, "a" * 63), r"models\.m\.sha256: expected 64 hex digits"),
        (('kind = "deblur"', 'kind = "vae"'), r"models\.m\.kind: unknown kind 'vae'"),
        (("0" * 40, "main"), r"models\.m\.source\.revision: pin a full 40-hex commit"),
        (("width = 8 }", "width = 8, seg_channel = 2 }"), r"only map networks"),
        (('"plain"', '"map"'), r"cat/map networks need a recipe"),
        (('"plain"', '"unet"'), r"models\.m\.net\.variant"),
        (("sha256", "sha_256"), r"unknown key\(s\) sha_256"),
        (("width = 8", 'width = "8"'), r"models\.m\.net\.width: expected whole numbers"),
    ],
)
def test_invalid_manifests_fail_with_the_place_and_the_problem(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    path = tmp_path / "weights.toml"
    path.write_text(_GOOD.replace(*change))
    with pytest.raises(SetupError, match=message):
        weights.load_manifest(path)


def test_the_good_test_manifest_is_valid_and_recipes_must_name_a_sam_entry(tmp_path: Path) -> None:
    path = tmp_path / "weights.toml"
    path.write_text(_GOOD)
    assert weights.load_manifest(path).get("m").net_config().width == 8
    path.write_text(
        '[recipes.r]\nsam = "m"\nchannel_order = "bgr"\n'
        + _GOOD.replace('"plain"', '"cat"').replace("net =", 'recipe = "r"\nnet =')
    )
    with pytest.raises(SetupError, match=r"recipes\.r\.sam: 'm' is not a SAM entry"):
        weights.load_manifest(path)


def test_published_map_entries_feed_masks_at_1_255() -> None:
    """upstream.md 4: the checkpoints learned on masks divided by 255; the file says so."""
    manifest = weights.load_manifest()
    raw = weights.tomllib.loads(weights.manifest_path().read_text())["models"]
    for name in ("segnafnet-gopro", "segnafnet-nodropout-gopro"):
        assert raw[name]["mask_value"] == "1/255"
        assert manifest.get(name).net_config().mask_value == MASK_VALUE_UPSTREAM
    assert float(np.float32(1) / np.float32(255)) == MASK_VALUE_UPSTREAM
    others = [e for e in raw.values() if e.get("net", {}).get("variant") != "map"]
    assert others and all("mask_value" not in entry for entry in others)


_MAP = (
    '[recipes.r]\nsam = "s"\nchannel_order = "bgr"\n'
    '[models.s]\nkind = "sam"\narch = "vit_b"\nlicense = "x"\nhomepage = "y"\n'
    'source = { page = "p", file = "s.pth" }\n'
    '[models.m]\nkind = "deblur"\nlicense = "x"\nhomepage = "y"\nrecipe = "r"\n'
    'source = { page = "p", file = "m.pth" }\nnet = { variant = "map", width = 8 }\n'
)


@pytest.mark.parametrize(
    ("line", "expected"),
    [("", MASK_VALUE_UPSTREAM), ('mask_value = "1/255"', MASK_VALUE_UPSTREAM),
     ('mask_value = "1"', 1.0), ("mask_value = 1", 1.0)],
)  # fmt: skip
def test_mask_value_of_a_map_entry(tmp_path: Path, line: str, expected: float) -> None:
    path = tmp_path / "weights.toml"
    path.write_text(_MAP.replace('recipe = "r"', f'recipe = "r"\n{line}'))
    config = weights.load_manifest(path).get("m").net_config()
    assert config.mask_value == expected and config.variant == "map"


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (_MAP.replace('recipe = "r"', 'recipe = "r"\nmask_value = "1/256"'), "use 1/255 or 1"),
        (_MAP.replace('recipe = "r"', 'recipe = "r"\nmask_value = 0'), r"\(0, 1\]"),
        (_GOOD.replace("net =", 'mask_value = "1"\nnet ='), "only map networks take a mask value"),
        (_MAP.replace("width = 8 }", 'width = 8, mask_value = "1" }'), r"net: unknown key"),
    ],
)
def test_bad_mask_values_are_refused(tmp_path: Path, manifest: str, message: str) -> None:
    path = tmp_path / "weights.toml"
    path.write_text(manifest)
    with pytest.raises(SetupError, match=message):
        weights.load_manifest(path)


def test_missing_or_broken_manifest_files_are_set_up_errors(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="does not exist"):
        weights.load_manifest(tmp_path / "absent.toml")
    (tmp_path / "bad.toml").write_text("[models\n")
    with pytest.raises(SetupError, match="cannot be read"):
        weights.load_manifest(tmp_path / "bad.toml")


# --------------------------------------------------------------------------- downloads


def test_first_use_downloads_the_pinned_revision_and_verifies(
    hub: FakeHub, published: Published
) -> None:
    entry = weights.load_manifest().get("tiny-plain")
    progress = Recorder()
    path = weights.ensure_weights(entry, progress=progress)
    assert path.read_bytes() == published.files["tiny-plain"]
    assert weights.hub_cache_dir() in path.parents
    head = next(r for r in hub.requests if r.method == "HEAD")
    assert head.path == f"/org/nets/resolve/{COMMIT}/tiny-plain.pth"
    assert head.headers["user-agent"].startswith("sam-deblur/")
    size = len(published.files["tiny-plain"])
    assert progress.last("download tiny-plain") == (size, size)
    assert progress.last("verify tiny-plain") == (size, size)
    assert weights.is_verified(entry, path)


def test_second_run_works_from_cache_without_the_server_or_rehashing(
    hub: FakeHub, published: Published
) -> None:
    entry = weights.load_manifest().get("tiny-plain")
    first = weights.ensure_weights(entry)
    seen = len(hub.requests)
    hub.stop()
    progress = Recorder()
    assert weights.ensure_weights(entry, progress=progress) == first
    assert progress.calls == []  # the verification was remembered: no re-hash
    assert len(hub.requests) == seen


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_offline_mode_uses_the_cache_and_explains_a_miss(
    hub: FakeHub, published: Published, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    entry = weights.load_manifest().get("tiny-plain")
    offline = how == "argument"
    if not offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        weights.ensure_weights(entry, offline=offline)
    message = str(info.value)
    assert "not in the cache" in message and "offline" in message
    assert "`sam-deblur weights download tiny-plain`" in message and "HF_ENDPOINT" in message
    assert hub.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cached = weights.ensure_weights(entry)
    if not offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.ensure_weights(entry, offline=offline) == cached


def test_checksum_mismatch_is_refused_and_the_download_removed(
    hub: FakeHub, published: Published
) -> None:
    served = hub.repos["org/nets"].files["tiny-plain.pth"]
    served.data = served.data[:-1] + bytes([served.data[-1] ^ 1])  # one flipped bit
    entry = weights.load_manifest().get("tiny-plain")
    with pytest.raises(ChecksumError) as info:
        weights.ensure_weights(entry)
    actual = hashlib.sha256(served.data).hexdigest()
    assert actual in str(info.value) and entry.sha256 in str(info.value)
    assert "weights download tiny-plain" in str(info.value)
    assert _hub_files() == []  # blob and snapshot link both gone
    assert weights.locate(entry) is None


def test_a_cached_file_changed_on_disk_is_caught(hub: FakeHub, published: Published) -> None:
    entry = weights.load_manifest().get("blob")
    path = weights.ensure_weights(entry)
    blob = path.resolve()
    blob.chmod(0o644)
    with blob.open("r+b") as f:
        f.write(b"\0\0\0\0")
    with pytest.raises(ChecksumError, match="the file was removed"):
        weights.ensure_weights(entry)
    assert not blob.exists() and not path.exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no-repo", r"has no repository org/absent"),
        ("no-file", r"has no file absent\.bin"),
        ("no-revision", r"has no revision f{40} of org/nets"),
    ],
)
def test_hub_404s_become_download_errors_with_advice(
    hub: FakeHub, published: Published, name: str, message: str
) -> None:
    with pytest.raises(DownloadError, match=message) as info:
        weights.ensure_weights(weights.load_manifest().get(name))
    assert "HF_ENDPOINT" in str(info.value)
    assert _hub_files() == []


def test_unreachable_endpoint_fails_at_once_with_advice(hub: FakeHub, published: Published) -> None:
    hub.stop()
    message = r"Cannot download tiny-plain: http://127\.0\.0\.1:\d+ cannot be reached"
    with pytest.raises(DownloadError, match=message):
        weights.ensure_weights(weights.load_manifest().get("tiny-plain"))


def test_interrupted_download_resumes_and_verifies(hub: FakeHub, published: Published) -> None:
    size = len(published.files["blob"])
    hub.cut_next_get, hub.cut_at = 1, size - 1000  # past huggingface_hub's 10 MB write chunk
    entry = weights.load_manifest().get("blob")
    path = weights.ensure_weights(entry)
    assert path.read_bytes() == published.files["blob"]
    gets = hub.gets()
    assert len(gets) == 2 and "range" not in gets[0].headers
    resumed = re.fullmatch(r"bytes=(\d+)-", gets[1].headers["range"])
    assert resumed is not None and 0 < int(resumed[1]) < size
    assert weights.is_verified(entry, path)


def test_drive_hosted_model_says_where_to_get_it_and_how_to_import(published: Published) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        weights.ensure_weights(weights.load_manifest().get("tiny-map"))
    message = str(info.value)
    assert "https://example.invalid/models (a drive)" in message
    assert "`sam-deblur weights import tiny-map PATH/TO/TinyMap.pth`" in message


# --------------------------------------------------------------------------- import / remove


def test_import_copies_an_upstream_file_and_records_its_sha256(
    published: Published, tmp_path: Path
) -> None:
    entry = weights.load_manifest().get("tiny-map")
    user_file = tmp_path / "TinyMap.pth"
    user_file.write_bytes(torch_bytes({"params": tiny_state_dict("map", seed=3)}))
    before = (user_file.read_bytes(), user_file.stat().st_mtime_ns)
    dest = weights.import_weights(entry, user_file)
    assert (user_file.read_bytes(), user_file.stat().st_mtime_ns) == before
    assert dest != user_file and weights.cache_root() in dest.parents
    assert dest.read_bytes() == before[0]
    sha = hashlib.sha256(before[0]).hexdigest()
    assert weights.expected_sha256(entry) == sha
    assert weights.ensure_weights(entry, offline=True) == dest
    user_file.unlink()  # the cache holds its own copy
    assert weights.ensure_weights(entry, offline=True) == dest


def test_import_refuses_the_wrong_architecture_listing_keys_and_shapes(
    published: Published, tmp_path: Path
) -> None:
    entry = weights.load_manifest().get("tiny-map")
    wrong = tmp_path / "plain.pth"
    wrong.write_bytes(torch_bytes({"params": tiny_state_dict("plain", width=8)}))
    with pytest.raises(CheckpointError) as info:
        weights.import_weights(entry, wrong)
    message = str(info.value)
    assert "pre_seg" in message  # MAP keys the plain file lacks
    assert "intro.weight" in message  # and a mis-shaped one
    assert weights.locate(entry) is None
    assert not any((weights.cache_root() / "imported").rglob("*.pth"))


def test_import_never_runs_a_malicious_pickle(published: Published, tmp_path: Path) -> None:
    canary = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.mkdir, (str(canary),))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(torch_bytes({"params": {"intro.weight": Payload()}}))
    with pytest.raises(CheckpointError, match=f"{re.escape(str(evil))} cannot be imported"):
        weights.import_weights(weights.load_manifest().get("tiny-map"), evil)
    assert not canary.exists()
    assert weights.locate(weights.load_manifest().get("tiny-map")) is None


def test_import_of_a_pinned_entry_checks_the_sha256_and_the_sam_architecture(
    published: Published, tmp_path: Path
) -> None:
    entry = weights.load_manifest().get("sam-test")
    other = tmp_path / "other.pth"
    other.write_bytes(published.files["tiny-plain"])
    with pytest.raises(ChecksumError, match=re.escape(entry.sha256)):
        weights.import_weights(entry, other)
    right = tmp_path / "sam_vit_b.pth"
    right.write_bytes(published.files["sam-test"])
    dest = weights.import_weights(entry, right)  # loads into the real ViT-B shapes
    assert weights.ensure_weights(entry, offline=True) == dest


def test_remove_deletes_downloads_and_imports(hub: FakeHub, published: Published) -> None:
    manifest = weights.load_manifest()
    downloaded = weights.ensure_weights(manifest.get("blob"))
    assert weights.remove_weights(manifest.get("blob")) == [downloaded]
    assert weights.locate(manifest.get("blob")) is None and _hub_files() == []
    assert weights.remove_weights(manifest.get("blob")) == []
